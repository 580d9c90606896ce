//! The web shop: one HTML page, a script and a stylesheet, embedded in the binary (no build
//! step, nothing fetched at run time). The script talks to the REST API.

use axum::{Router, response::IntoResponse, routing::get};
use http::header;

use crate::state::AppState;

mod images;

const INDEX: &str = include_str!("../../static/index.html");
const APP_JS: &str = include_str!("../../static/app.js");
const STYLE: &str = include_str!("../../static/style.css");

async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
}

async fn app_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_JS,
    )
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STYLE,
    )
}

/// What every answer of the shop's origin tells the browser: run only the shop's own script
/// and styles (no inline code: the page has none, so an injected `<script>` in a product
/// name would not run), never inside another site's frame (clickjacking), never guess a
/// content type, and send no referrer to anyone.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn security_headers(router: Router) -> Router {
    use tower_http::set_header::SetResponseHeaderLayer as Set;
    let value = http::HeaderValue::from_static;
    router
        .layer(Set::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            value(CONTENT_SECURITY_POLICY),
        ))
        .layer(Set::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            value("nosniff"),
        ))
        .layer(Set::if_not_present(
            header::REFERRER_POLICY,
            value("no-referrer"),
        ))
        .layer(Set::if_not_present(header::X_FRAME_OPTIONS, value("DENY")))
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/static/app.js", get(app_js))
        .route("/static/style.css", get(style))
        .route("/img/items/{file}", get(images::item_image))
}
