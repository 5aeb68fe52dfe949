//! The `Recommend` call and the health service, over real sockets.

mod support;

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use recommendations::{
    Config, FailRate, SERVED_BY,
    pb::{BookCategory, BookRecommendation, RecommendationRequest},
};
use support::Server;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

fn request(category: BookCategory, max_results: i32) -> RecommendationRequest {
    RecommendationRequest {
        user_id: 1,
        category: category.into(),
        max_results,
    }
}

fn named(name: &str) -> Config {
    Config {
        instance_name: name.parse().unwrap(),
        ..Config::default()
    }
}

fn sorted(books: &[BookRecommendation]) -> Vec<(i32, &str)> {
    let mut books: Vec<_> = books.iter().map(|b| (b.id, b.title.as_str())).collect();
    books.sort_unstable();
    books
}

#[tokio::test]
async fn each_category_returns_its_own_books() {
    let server = Server::start(Config::default()).await;
    let mut client = server.client().await;
    let expected = [
        (
            BookCategory::Mystery,
            vec![
                (1, "The Maltese Falcon"),
                (2, "Murder on the Orient Express"),
                (3, "The Hound of the Baskervilles"),
            ],
        ),
        (
            BookCategory::ScienceFiction,
            vec![
                (4, "The Hitchhiker's Guide to the Galaxy"),
                (5, "Ender's Game"),
                (6, "The Dune Chronicles"),
            ],
        ),
        (
            BookCategory::SelfHelp,
            vec![
                (7, "The 7 Habits of Highly Effective People"),
                (8, "How to Win Friends and Influence People"),
                (9, "Man's Search for Meaning"),
            ],
        ),
    ];
    for (category, books) in expected {
        let answer = client.recommend(request(category, 3)).await.unwrap();
        assert_eq!(
            sorted(&answer.get_ref().recommendations),
            books,
            "{category:?}"
        );
    }
}

#[tokio::test]
async fn max_results_bounds_the_sample() {
    let server = Server::start(Config::default()).await;
    let mut client = server.client().await;
    let science_fiction: HashSet<i32> = (4..=6).collect();
    for (max_results, expected) in [(0, 0), (1, 1), (3, 3), (10, 3), (-1, 0), (i32::MIN, 0)] {
        let answer = client
            .recommend(request(BookCategory::ScienceFiction, max_results))
            .await
            .unwrap()
            .into_inner();
        let ids: HashSet<i32> = answer.recommendations.iter().map(|b| b.id).collect();
        assert_eq!(
            answer.recommendations.len(),
            expected,
            "max_results {max_results}"
        );
        assert_eq!(ids.len(), expected, "repeats for max_results {max_results}");
        assert!(ids.is_subset(&science_fiction), "{ids:?}");
    }
}

#[tokio::test]
async fn unknown_category_is_not_found() {
    let server = Server::start(named("reco-a")).await;
    let mut client = server.client().await;
    let unknown = RecommendationRequest {
        user_id: 1,
        category: 7,
        max_results: 3,
    };
    let status = client.recommend(unknown).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "Category not found");
    // Errors name their instance too.
    assert_eq!(status.metadata().get(SERVED_BY).unwrap(), "reco-a");
}

#[tokio::test]
async fn answers_name_the_instance() {
    let server = Server::start(named("reco-b")).await;
    let mut client = server.client().await;
    let answer = client
        .recommend(request(BookCategory::Mystery, 1))
        .await
        .unwrap();
    assert_eq!(answer.metadata().get(SERVED_BY).unwrap(), "reco-b");
}

#[tokio::test]
async fn fail_rate_one_fails_every_call_as_unavailable() {
    let config = Config {
        fail_rate: FailRate::new(1.0).unwrap(),
        ..named("reco-c")
    };
    let server = Server::start(config).await;
    let mut client = server.client().await;
    for _ in 0..5 {
        let status = client
            .recommend(request(BookCategory::Mystery, 3))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("injected failure"), "{status:?}");
        assert_eq!(status.metadata().get(SERVED_BY).unwrap(), "reco-c");
    }
}

#[tokio::test]
async fn latency_delays_every_call() {
    let config = Config {
        latency: "60ms..80ms".parse().unwrap(),
        ..Config::default()
    };
    let server = Server::start(config).await;
    let mut client = server.client().await;
    let started = Instant::now();
    client
        .recommend(request(BookCategory::Mystery, 3))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(60),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn health_reports_serving() {
    let server = Server::start(Config::default()).await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "Recommendations"] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answer.status(),
            ServingStatus::Serving,
            "service {service:?}"
        );
    }
    let unknown = HealthCheckRequest {
        service: "Nope".to_owned(),
    };
    assert_eq!(
        health.check(unknown).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn shutdown_is_graceful() {
    let server = Server::start(Config::default()).await;
    let address = server.address;
    let mut client = server.client().await;
    client
        .recommend(request(BookCategory::Mystery, 3))
        .await
        .unwrap();
    drop(client);
    server.stop().await.unwrap();
    // The listener is closed once `run` has returned.
    assert!(tokio::net::TcpStream::connect(address).await.is_err());
}
