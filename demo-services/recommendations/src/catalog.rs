//! The books on offer: three per category, as in the tutorial.

use rand::seq::IndexedRandom;

use crate::pb::{BookCategory, BookRecommendation};

/// A book as stored in the catalog; turned into a [`BookRecommendation`] when sampled.
struct Book {
    id: i32,
    title: &'static str,
}

const MYSTERY: &[Book] = &[
    Book {
        id: 1,
        title: "The Maltese Falcon",
    },
    Book {
        id: 2,
        title: "Murder on the Orient Express",
    },
    Book {
        id: 3,
        title: "The Hound of the Baskervilles",
    },
];

const SCIENCE_FICTION: &[Book] = &[
    Book {
        id: 4,
        title: "The Hitchhiker's Guide to the Galaxy",
    },
    Book {
        id: 5,
        title: "Ender's Game",
    },
    Book {
        id: 6,
        title: "The Dune Chronicles",
    },
];

const SELF_HELP: &[Book] = &[
    Book {
        id: 7,
        title: "The 7 Habits of Highly Effective People",
    },
    Book {
        id: 8,
        title: "How to Win Friends and Influence People",
    },
    Book {
        id: 9,
        title: "Man's Search for Meaning",
    },
];

fn books(category: BookCategory) -> &'static [Book] {
    match category {
        BookCategory::Mystery => MYSTERY,
        BookCategory::ScienceFiction => SCIENCE_FICTION,
        BookCategory::SelfHelp => SELF_HELP,
    }
}

/// A random sample of `category`'s books, at most `max_results` of them (none when
/// `max_results` is zero or negative), without repeats.
pub(crate) fn recommend(category: BookCategory, max_results: i32) -> Vec<BookRecommendation> {
    let wanted = usize::try_from(max_results).unwrap_or(0);
    books(category)
        .choose_multiple(&mut rand::rng(), wanted)
        .map(|book| BookRecommendation {
            id: book.id,
            title: book.title.to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn samples_are_bounded_by_max_results_and_the_category_size() {
        for (max_results, expected) in [(-5, 0), (0, 0), (1, 1), (2, 2), (3, 3), (i32::MAX, 3)] {
            let books = recommend(BookCategory::Mystery, max_results);
            assert_eq!(books.len(), expected, "max_results = {max_results}");
        }
    }

    #[test]
    fn samples_have_no_repeats_and_stay_in_their_category() {
        let ids: HashSet<i32> = (1..=3).collect();
        for _ in 0..50 {
            let sample: Vec<i32> = recommend(BookCategory::Mystery, 2)
                .iter()
                .map(|book| book.id)
                .collect();
            let unique: HashSet<i32> = sample.iter().copied().collect();
            assert_eq!(unique.len(), sample.len(), "repeated book in {sample:?}");
            assert!(unique.is_subset(&ids), "{sample:?} strays outside MYSTERY");
        }
    }
}
