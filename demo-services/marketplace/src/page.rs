//! The HTML the marketplace serves. Everything that comes from another service is escaped.

use std::fmt::Write;

use recommendations::pb::BookRecommendation;

const HEAD: &str = "<!doctype html>\n<html lang=\"en\">\n<head>\n\
    <meta charset=\"utf-8\">\n<title>Online Books For You</title>\n</head>\n<body>\n";
const TAIL: &str = "</body>\n</html>\n";

/// The tutorial's page: a heading and one `<li>` per book, plus which recommendations
/// instance answered (from `x-served-by`), so a reader can watch a mesh balance calls.
pub(crate) fn recommendations(books: &[BookRecommendation], served_by: Option<&str>) -> String {
    let mut html = String::from(HEAD);
    html.push_str("<h1>Mystery books you may like</h1>\n<ul>\n");
    for book in books {
        let _ = writeln!(html, "<li>{}</li>", escape(&book.title));
    }
    html.push_str("</ul>\n");
    if let Some(instance) = served_by {
        let _ = writeln!(
            html,
            "<p>Served by recommendations instance <code>{}</code>.</p>",
            escape(instance)
        );
    }
    html.push_str(TAIL);
    html
}

/// The page shown when the `Recommend` call fails, naming the gRPC status.
pub(crate) fn upstream_error(status: &tonic::Status) -> String {
    let mut html = String::from(HEAD);
    html.push_str("<h1>Recommendations are unavailable</h1>\n");
    let _ = writeln!(
        html,
        "<p>The recommendations service answered gRPC status <code>{} ({})</code>: {}</p>",
        code_name(status.code()),
        i32::from(status.code()),
        escape(status.message()),
    );
    html.push_str(TAIL);
    html
}

/// The status code's name as the gRPC specification spells it, e.g. `DEADLINE_EXCEEDED`.
fn code_name(code: tonic::Code) -> String {
    let camel = format!("{code:?}");
    let mut name = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_escaped() {
        let books = [BookRecommendation {
            id: 1,
            title: "<script>alert('x')</script> & co".to_owned(),
        }];
        let html = recommendations(&books, Some("a<b"));
        assert!(html.contains("<li>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; co</li>"));
        assert!(html.contains("<code>a&lt;b</code>"));
        assert!(!html.contains("<script>"));
    }

    #[test]
    fn served_by_line_only_when_known() {
        assert!(!recommendations(&[], None).contains("Served by"));
        assert!(recommendations(&[], Some("r-1")).contains("Served by"));
    }

    #[test]
    fn code_names_follow_the_grpc_spelling() {
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::Unavailable), "UNAVAILABLE");
        assert_eq!(
            code_name(tonic::Code::DeadlineExceeded),
            "DEADLINE_EXCEEDED"
        );
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
    }

    #[test]
    fn error_page_names_the_status() {
        let status = tonic::Status::unavailable("no <route>");
        let html = upstream_error(&status);
        assert!(html.contains("UNAVAILABLE (14)"));
        assert!(html.contains("no &lt;route&gt;"));
    }
}
