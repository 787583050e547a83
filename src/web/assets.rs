//! The page's files, compiled into the binary (`web/` at the crate's root): no CDN, works
//! offline.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const INDEX: &[u8] = include_bytes!("../../web/index.html");
const SCRIPT: &[u8] = include_bytes!("../../web/app.js");
const STYLE: &[u8] = include_bytes!("../../web/app.css");

fn file(content_type: &'static str, body: &'static [u8]) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The page with a login session's key for its script to keep (the answer to a login).
pub(super) fn index_with_key(key: &str) -> Response {
    let page = std::str::from_utf8(INDEX).expect("the page is UTF-8");
    let hex = key.bytes().all(|b| b.is_ascii_hexdigit());
    assert!(hex, "a session key is hex");
    let meta = format!("<head>\n<meta name=\"coflow-key\" content=\"{key}\">");
    let body = page.replacen("<head>", &meta, 1);
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

/// The page (every path of it: `/`, `/join`, `/flow/{id}`).
pub(super) async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

pub(super) async fn script() -> Response {
    file("text/javascript; charset=utf-8", SCRIPT)
}

pub(super) async fn style() -> Response {
    file("text/css; charset=utf-8", STYLE)
}
