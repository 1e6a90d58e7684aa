//! The one way routes are added to the API: [`Routes`] adds each method and
//! path to the axum router and records it in a table as it does, so the
//! table is exactly what the router serves. `tests/it/openapi.rs` checks it
//! against `openapi.yaml` both ways.

use std::convert::Infallible;

use axum::{
    extract::Request,
    handler::Handler,
    http::Method,
    response::IntoResponse,
    routing::{self, MethodRouter, Route},
    Router,
};
use tower::{Layer, Service};

use super::AppState;

/// An axum router (without its state yet) and the method and path of every
/// route added to it.
#[must_use]
pub struct Routes {
    router: Router<AppState>,
    table: Vec<(Method, &'static str)>,
}

impl Default for Routes {
    fn default() -> Routes {
        Routes::new()
    }
}

impl Routes {
    pub fn new() -> Routes {
        Routes {
            router: Router::new(),
            table: Vec::new(),
        }
    }

    fn add(mut self, method: Method, path: &'static str, method_router: MethodRouter<AppState>) -> Routes {
        assert!(
            !self.table.iter().any(|(m, p)| *m == method && *p == path),
            "{method} {path} is routed twice"
        );
        self.router = self.router.route(path, method_router);
        self.table.push((method, path));
        self
    }

    pub fn get<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, handler: H) -> Routes {
        self.add(Method::GET, path, routing::get(handler))
    }

    pub fn post<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, handler: H) -> Routes {
        self.add(Method::POST, path, routing::post(handler))
    }

    pub fn put<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, handler: H) -> Routes {
        self.add(Method::PUT, path, routing::put(handler))
    }

    pub fn delete<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, handler: H) -> Routes {
        self.add(Method::DELETE, path, routing::delete(handler))
    }

    /// The routes of `other` added to these.
    pub fn merge(mut self, other: Routes) -> Routes {
        for (method, path) in &other.table {
            assert!(
                !self.table.iter().any(|(m, p)| m == method && p == path),
                "{method} {path} is routed twice"
            );
        }
        self.router = self.router.merge(other.router);
        self.table.extend(other.table);
        self
    }

    /// `layer` around the routes added so far (axum's `Router::layer`).
    pub fn layer<L>(mut self, layer: L) -> Routes
    where
        L: Layer<Route> + Clone + Send + Sync + 'static,
        L::Service: Service<Request> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request>>::Response: IntoResponse + 'static,
        <L::Service as Service<Request>>::Error: Into<Infallible> + 'static,
        <L::Service as Service<Request>>::Future: Send + 'static,
    {
        self.router = self.router.layer(layer);
        self
    }

    /// Every method and path routed, in the order they were added.
    pub fn table(&self) -> &[(Method, &'static str)] {
        &self.table
    }

    pub fn into_router(self) -> Router<AppState> {
        self.router
    }
}
