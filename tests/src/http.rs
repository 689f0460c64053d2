//! A small JSON client for end-to-end tests: every call returns the status,
//! the body as JSON (Null when empty) and the raw text, so tests can assert
//! on codes and scan for canaries.
#![expect(
    clippy::expect_used,
    reason = "test support: a failed step should stop the test loudly"
)]

use reqwest::{Client, Method, StatusCode};
use serde_json::Value;

/// One answer from the server.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
    pub text: String,
}

impl Answer {
    /// `error.code` of an error body.
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }

    /// A response header, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A client bound to one server and (optionally) one user's token.
#[derive(Clone)]
pub struct Api {
    client: Client,
    base: String,
    token: Option<String>,
}

impl Api {
    pub fn new(base: &str, token: Option<&str>) -> Self {
        Self {
            client: Client::new(),
            base: base.trim_end_matches('/').to_owned(),
            token: token.map(str::to_owned),
        }
    }

    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Answer {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(body);
        }
        self.finish(req).await
    }

    /// Sends `raw` bytes as the body with `content_type` (or none).
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        raw: Vec<u8>,
        content_type: Option<&str>,
    ) -> Answer {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .body(raw);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        self.finish(req).await
    }

    async fn finish(&self, mut req: reqwest::RequestBuilder) -> Answer {
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        let res = req.send().await.expect("request reaches the server");
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            json,
            text,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(Method::POST, path, Some(&body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Answer {
        self.send(Method::PATCH, path, Some(&body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Answer {
        self.send(Method::PUT, path, Some(&body)).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.send(Method::DELETE, path, None).await
    }

    /// `POST /v1/chat/completions` of one short user message to `model`.
    pub async fn chat(&self, model: &str) -> Answer {
        let body = serde_json::json!({
            "model": model,
            "messages": [{"role": "user", "content": "Hi"}],
        });
        self.post("/v1/chat/completions", body).await
    }

    /// `GET path` again until its `requests` list holds `count` rows (or 5 s
    /// pass): the ledger entry of an answer sent whole is written after the
    /// answer, off the request's path, so a read right after can miss it.
    pub async fn requests_once_counted(&self, path: &str, count: usize) -> Answer {
        let mut answer = self.get(path).await;
        for _ in 0..100 {
            if answer.json["requests"].as_array().map(Vec::len) >= Some(count) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            answer = self.get(path).await;
        }
        answer
    }
}
