//! `travel-agent serve` end to end, as real processes on 127.0.0.1: Cognito tokens from
//! ministack's user pools (`InitiateAuth` gives real RS256 tokens) and from a JWKS of the test's
//! own, sessions in ministack's S3, the vLLM-format model server, SIGTERM drains.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_tests::{Fault, MockVllm, Turn};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// A test-only RSA key (PKCS#1 DER); `fixtures/test-jwks.json` is its public half, kid `test-key-1`.
const SIGNING_KEY: &[u8] = include_bytes!("fixtures/test-signing-key.der");
const TEST_JWKS: &str = include_str!("fixtures/test-jwks.json");

/// A `travel-agent serve` process; killed when dropped unless it already exited.
struct Service {
    child: Child,
    url: String,
    stderr: Arc<Mutex<String>>,
}

impl Service {
    fn start(args: &[&str], env: &[(&str, String)]) -> Self {
        Self::try_start(args, env).unwrap_or_else(|log| panic!("the service did not start:\n{log}"))
    }

    /// Starts the service and waits (bounded) for its `listening on` line; the error is its
    /// stderr.
    fn try_start(args: &[&str], env: &[(&str, String)]) -> Result<Self, String> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_travel-agent"));
        command
            .arg("serve")
            .args(args)
            .env_remove("OPENAI_MODEL")
            .env_remove("OPENAI_API_KEY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("COGNITO_ISSUER")
            .env_remove("COGNITO_USER_POOL_ID")
            .env_remove("TRAVEL_AGENT_SESSION_BUCKET")
            .env_remove("TRAVEL_AGENT_MEMORY_TABLE")
            .env_remove("TRAVEL_AGENT_LOG_FORMAT")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().expect("stderr");
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(url) = agent_tests::listening_address(&line) {
                    let _ = tx.send(url);
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => Ok(Self { child, url, stderr }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                // The reader thread has the rest once the pipe closes.
                std::thread::sleep(Duration::from_millis(200));
                Err(stderr.lock().unwrap().clone())
            }
        }
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The service's `GET /metrics` (it must have been started with `--metrics-listen`): each
    /// sample line's name (with its labels) and value.
    async fn metrics(&self) -> std::collections::HashMap<String, f64> {
        let log = self.log();
        let url = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["fields"]["message"] == "metrics")
            .and_then(|l| l["fields"]["address"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("no metrics line:\n{log}"));
        let response = http().get(&url).send().await.expect("metrics");
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let text = response.text().await.expect("text");
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (name, value) = l.rsplit_once(' ').expect("name value");
                (name.to_owned(), value.parse().expect("a number"))
            })
            .collect()
    }

    fn sigterm(&self) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) with a process id this test spawned and still owns.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "SIGTERM");
    }

    /// Waits (bounded) for the process to exit; its exit code.
    async fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(
                started.elapsed() < within,
                "still running after {within:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// `POST /invocations` in JSON mode.
async fn invoke(
    service: &Service,
    token: Option<&str>,
    body: Value,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = http()
        .post(format!("{}/invocations", service.url))
        .header("accept", "application/json")
        .json(&body);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

/// Polls `GET /ping` until it reports `status` (`Healthy` or `HealthyBusy`), at most `within`.
async fn ping_until(service: &Service, status: &str, within: Duration) {
    let started = Instant::now();
    loop {
        let ping: Value = http()
            .get(format!("{}/ping", service.url))
            .send()
            .await
            .expect("ping")
            .json()
            .await
            .expect("json");
        if ping["status"] == status {
            return;
        }
        assert!(
            started.elapsed() < within,
            "/ping never said {status} within {within:?}: {ping}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `POST /invocations` in JSON mode, in a task of its own; the task's outcome is the body.
fn invoke_in_background(service: &Service, body: Value) -> tokio::task::JoinHandle<Value> {
    invoke_in_background_with(service, body, &[])
}

/// [`invoke_in_background`] with request headers.
fn invoke_in_background_with(
    service: &Service,
    body: Value,
    headers: &[(&'static str, &'static str)],
) -> tokio::task::JoinHandle<Value> {
    let mut request = http()
        .post(format!("{}/invocations", service.url))
        .header("accept", "application/json")
        .json(&body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    tokio::spawn(async move {
        request
            .send()
            .await
            .expect("send")
            .json::<Value>()
            .await
            .expect("json")
    })
}

/// `POST /invocations` as SSE, read to the end (bounded by 5 minutes: a real model on a busy
/// CPU is slow): the (event, data) pairs.
async fn invoke_sse(service: &Service, token: Option<&str>, body: Value) -> Vec<(String, Value)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("client");
    let mut request = client
        .post(format!("{}/invocations", service.url))
        .json(&body);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.expect("send");
    let status = response.status();
    if status != 200 {
        panic!("{status}: {}", response.text().await.unwrap_or_default());
    }
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "SSE by default"
    );
    let text = response.text().await.expect("body");
    text.split("\n\n")
        .filter_map(|frame| {
            let event = frame.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = frame.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((
                event.to_owned(),
                serde_json::from_str(data).expect("json data"),
            ))
        })
        .collect()
}

async fn messages(service: &Service, token: Option<&str>, session: &str) -> (u16, Value) {
    let mut request = http().get(format!("{}/sessions/{session}/messages", service.url));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn aws_endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| {
        panic!(
            "AWS_ENDPOINT_URL is not set: run scripts/test.sh, or export \
             AWS_ENDPOINT_URL=$(scripts/aws-local.sh start) with AWS_ACCESS_KEY_ID, \
             AWS_SECRET_ACCESS_KEY and AWS_REGION"
        )
    })
}

/// One Cognito call on ministack (the AWS JSON 1.1 protocol).
async fn cognito(op: &str, body: Value) -> Value {
    let response = http()
        .post(aws_endpoint())
        .header("content-type", "application/x-amz-json-1.1")
        .header(
            "x-amz-target",
            format!("AWSCognitoIdentityProviderService.{op}"),
        )
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=test/20261130/us-east-1/cognito-idp/aws4_request, \
             SignedHeaders=host, Signature=0",
        )
        .json(&body)
        .send()
        .await
        .expect("cognito");
    let status = response.status();
    let value: Value = response.json().await.expect("json");
    assert!(status.is_success(), "{op}: {status} {value}");
    value
}

/// A user pool with app clients `allowed` and `other`; tokens of its users come from
/// `InitiateAuth`.
struct Pool {
    id: String,
    allowed: String,
    other: String,
}

impl Pool {
    async fn create(name: &str) -> Self {
        let id = cognito("CreateUserPool", json!({"PoolName": name})).await["UserPool"]["Id"]
            .as_str()
            .expect("pool id")
            .to_owned();
        let client = |n: &'static str| {
            let id = id.clone();
            async move {
                cognito(
                    "CreateUserPoolClient",
                    json!({"UserPoolId": id, "ClientName": n,
                           "ExplicitAuthFlows": ["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"]}),
                )
                .await["UserPoolClient"]["ClientId"]
                    .as_str()
                    .expect("client id")
                    .to_owned()
            }
        };
        let allowed = client("web").await;
        let other = client("other").await;
        Self { id, allowed, other }
    }

    fn issuer(&self) -> String {
        format!("https://cognito-idp.us-east-1.amazonaws.com/{}", self.id)
    }

    /// An access token of `user` (created on first use) for `client`.
    async fn token(&self, user: &str, client: &str) -> String {
        let password = format!("Passw0rd-{user}!");
        let created = http()
            .post(aws_endpoint())
            .header("content-type", "application/x-amz-json-1.1")
            .header(
                "x-amz-target",
                "AWSCognitoIdentityProviderService.AdminGetUser",
            )
            .json(&json!({"UserPoolId": self.id, "Username": user}))
            .send()
            .await
            .expect("get user")
            .status()
            .is_success();
        if !created {
            cognito(
                "AdminCreateUser",
                json!({"UserPoolId": self.id, "Username": user,
                       "TemporaryPassword": "Temp-Passw0rd!", "MessageAction": "SUPPRESS"}),
            )
            .await;
            cognito(
                "AdminSetUserPassword",
                json!({"UserPoolId": self.id, "Username": user, "Password": password, "Permanent": true}),
            )
            .await;
        }
        cognito(
            "InitiateAuth",
            json!({"AuthFlow": "USER_PASSWORD_AUTH", "ClientId": client,
                   "AuthParameters": {"USERNAME": user, "PASSWORD": password}}),
        )
        .await["AuthenticationResult"]["AccessToken"]
            .as_str()
            .expect("access token")
            .to_owned()
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The claims of a token, unverified (to forge variants of it).
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64");
    serde_json::from_slice(&bytes).expect("claims")
}

/// A token signed with the test's own key.
fn signed(kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let key = EncodingKey::from_rsa_der(SIGNING_KEY);
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn assert_refused(status: u16, headers: &reqwest::header::HeaderMap, body: &Value, why: &str) {
    assert_eq!(status, 401, "{why}: {body}");
    let challenge = headers["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(challenge.contains("invalid_token"), "{challenge}");
    assert!(
        body["message"].as_str().unwrap_or("").contains(why),
        "{why}: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cognito_tokens_are_checked_and_sessions_belong_to_their_user() {
    let pool = Pool::create("travel").await;
    let elsewhere = Pool::create("elsewhere").await;
    let model = MockVllm::start_bench("127.0.0.1:0").await.expect("model");
    let (s3, _) = agent_tests::aws_clients().await;
    let bucket = format!("travel-sessions-{:08x}", fastrand::u32(..));
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("bucket");
    let service = Service::start(
        &["--listen", "127.0.0.1:0"],
        &[
            ("OPENAI_BASE_URL", model.base_url()),
            ("COGNITO_ISSUER", pool.issuer()),
            ("COGNITO_CLIENT_IDS", pool.allowed.clone()),
            (
                "COGNITO_JWKS_URL",
                format!("{}/{}/.well-known/jwks.json", aws_endpoint(), pool.id),
            ),
            ("TRAVEL_AGENT_SESSION_BUCKET", bucket.clone()),
        ],
    );
    assert!(
        service
            .log()
            .contains(&format!("sessions in s3://{bucket}/"))
    );
    let alice = pool.token("alice", &pool.allowed).await;
    let bob = pool.token("bob", &pool.allowed).await;

    // A real token: the run streams to its `stop`, through a tool call.
    let events = invoke_sse(
        &service,
        Some(&alice),
        json!({"prompt": "Weather in Lisbon?", "session_id": "trip"}),
    )
    .await;
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert!(names.contains(&"tool_result"), "{names:?}");
    assert_eq!(names.last(), Some(&"stop"), "{names:?}");
    assert_eq!(events.last().unwrap().1["stop_reason"], "end_turn");

    // Each refused token, with a 401 and a challenge that says why.
    let (status, headers, body) = invoke(&service, None, json!({"prompt": "hi"}), &[]).await;
    assert_refused(status, &headers, &body, "no bearer token");
    let wrong_client = pool.token("alice", &pool.other).await;
    let (status, headers, body) =
        invoke(&service, Some(&wrong_client), json!({"prompt": "hi"}), &[]).await;
    assert_refused(status, &headers, &body, "another client");
    // Another pool's token: each pool signs with keys of its own, so it fails on the key
    // before its issuer is read (the issuer check with a trusted key is in the next test).
    let foreign_pool = elsewhere.token("carol", &elsewhere.allowed).await;
    let (status, headers, body) =
        invoke(&service, Some(&foreign_pool), json!({"prompt": "hi"}), &[]).await;
    assert_refused(status, &headers, &body, "unknown key");
    // `alg: none`, the claims of a valid token, no signature.
    let claims = claims_of(&alice);
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    );
    let (status, headers, body) = invoke(&service, Some(&none), json!({"prompt": "hi"}), &[]).await;
    assert_refused(status, &headers, &body, "");
    // HS256 keyed with the issuer's public key (the JWKS as served).
    let jwks = http()
        .get(format!(
            "{}/{}/.well-known/jwks.json",
            aws_endpoint(),
            pool.id
        ))
        .send()
        .await
        .expect("jwks")
        .bytes()
        .await
        .expect("jwks body");
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("ministack-key-1".to_owned());
    let confused = jsonwebtoken::encode(
        &hs,
        &claims,
        &EncodingKey::from_secret(&jwks).expect("secret"),
    )
    .expect("hs256");
    let (status, headers, body) =
        invoke(&service, Some(&confused), json!({"prompt": "hi"}), &[]).await;
    assert_refused(status, &headers, &body, "HS256");
    // The right claims and key id, signed with a key the issuer never had.
    let kid = jsonwebtoken::decode_header(&alice).unwrap().kid.unwrap();
    let forged = signed(&kid, &claims);
    let (status, headers, body) =
        invoke(&service, Some(&forged), json!({"prompt": "hi"}), &[]).await;
    assert_refused(status, &headers, &body, "signature");

    // Sessions belong to their user: bob cannot read alice's `trip`, and his own `trip` is
    // another session.
    let (status, alice_trip) = messages(&service, Some(&alice), "trip").await;
    assert_eq!(status, 200, "{alice_trip}");
    let alice_count = alice_trip["messages"].as_array().unwrap().len();
    assert_eq!(alice_count, 4, "prompt, tool call, tool result, answer");
    let (status, _) = messages(&service, Some(&bob), "trip").await;
    assert_eq!(status, 404);
    let (status, _, body) = invoke(
        &service,
        Some(&bob),
        json!({"prompt": "Weather in Porto?", "session_id": "trip"}),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, bob_trip) = messages(&service, Some(&bob), "trip").await;
    assert_eq!(
        bob_trip["messages"][0]["content"][0]["text"],
        "Weather in Porto?"
    );
    let (_, again) = messages(&service, Some(&alice), "trip").await;
    assert_eq!(again, alice_trip, "bob's run did not touch alice's session");
    let (status, _) = messages(&service, Some(&alice), "../trip").await;
    assert!(status == 400 || status == 404, "{status}");

    // The session lives in S3, under alice's subject.
    let sub = claims["sub"].as_str().unwrap();
    let listed = s3
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("travel-agent/")
        .send()
        .await
        .expect("list");
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert!(
        keys.iter().any(|k| k.contains(&format!("{sub}.trip"))),
        "{keys:?}"
    );
}

/// Serves the test's own JWKS; counts fetches.
async fn jwks_server() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = fetches.clone();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { ([("content-type", "application/json")], TEST_JWKS) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/jwks.json"), fetches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_early_and_misaddressed_tokens_of_a_trusted_key_are_refused() {
    const ISSUER: &str = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_test";
    let (jwks_url, fetches) = jwks_server().await;
    let model = MockVllm::start_bench("127.0.0.1:0").await.expect("model");
    let dir = tempfile::tempdir().expect("dir");
    let service = Service::start(
        &["--listen", "127.0.0.1:0"],
        &[
            ("OPENAI_BASE_URL", model.base_url()),
            ("COGNITO_ISSUER", ISSUER.to_owned()),
            ("COGNITO_CLIENT_IDS", "app-1, app-2".to_owned()),
            ("COGNITO_JWKS_URL", jwks_url),
            ("TRAVEL_AGENT_DATA_DIR", dir.path().display().to_string()),
        ],
    );
    let t = now();
    let good = json!({"sub": "5f1c-user", "iss": ISSUER, "token_use": "access",
                      "client_id": "app-2", "exp": t + 600, "iat": t});
    let with = |patch: Value| {
        let mut c = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        signed("test-key-1", &c)
    };
    let (status, headers, body) = invoke(
        &service,
        Some(&signed("test-key-1", &good)),
        json!({"prompt": "Weather in Lisbon?"}),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["text"].as_str().unwrap().starts_with("w0 w1"),
        "{body}"
    );
    let session = headers["x-session-id"].to_str().unwrap();
    assert_eq!(body["session_id"], session);
    // An id token names its client in `aud`.
    let id_token = with(json!({"token_use": "id", "client_id": null, "aud": "app-1"}));
    let (status, _, body) = invoke(&service, Some(&id_token), json!({"prompt": "hi"}), &[]).await;
    assert_eq!(status, 200, "{body}");

    for (token, why) in [
        (with(json!({"exp": t - 120})), "expired"),
        (with(json!({"nbf": t + 600})), "not valid yet"),
        (with(json!({"client_id": "app-3"})), "another client"),
        (
            with(json!({"iss": "https://cognito-idp.eu-west-1.amazonaws.com/other"})),
            "another issuer",
        ),
        (
            with(json!({"token_use": "refresh"})),
            "neither an access nor an id token",
        ),
        (with(json!({"sub": "a.b"})), "subject"),
        (signed("rotated-away", &good), "unknown key"),
        (signed("another-unknown", &good), "unknown key"),
    ] {
        let (status, headers, body) =
            invoke(&service, Some(&token), json!({"prompt": "hi"}), &[]).await;
        assert_refused(status, &headers, &body, why);
    }
    // Unknown key ids within a minute of the last fetch do not fetch the JWKS again: a token
    // with a made-up key id cannot make the service hammer the issuer.
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);

    // An issuer whose keys cannot be fetched: 503 with Retry-After, not a 401 that would make
    // clients throw their good tokens away.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_jwks = format!("http://{}/jwks.json", closed.local_addr().unwrap());
    drop(closed);
    let unreachable = Service::start(
        &["--listen", "127.0.0.1:0"],
        &[
            ("OPENAI_BASE_URL", model.base_url()),
            ("COGNITO_ISSUER", ISSUER.to_owned()),
            ("COGNITO_CLIENT_IDS", "app-1".to_owned()),
            ("COGNITO_JWKS_URL", dead_jwks),
            ("TRAVEL_AGENT_DATA_DIR", dir.path().display().to_string()),
        ],
    );
    for _ in 0..2 {
        let (status, headers, body) = invoke(
            &unreachable,
            Some(&signed("test-key-1", &good)),
            json!({"prompt": "hi"}),
            &[],
        )
        .await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["kind"], "auth_unavailable");
        assert!(headers.contains_key("retry-after"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_under_load_and_idempotent() {
    let model = MockVllm::start([]).await.expect("model");
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().display().to_string();
    let env = [
        ("OPENAI_BASE_URL", model.base_url()),
        ("TRAVEL_AGENT_DATA_DIR", data),
    ];
    let service = Service::start(
        &[
            "--no-auth",
            "--listen",
            "127.0.0.1:0",
            "--max-concurrent",
            "1",
            "--max-body-bytes",
            "4096",
            "--max-prompt-bytes",
            "1000",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &env,
    );
    // Sizes: the body limit, then the prompt limit.
    let (status, _, _) = invoke(&service, None, json!({"prompt": "x".repeat(5000)}), &[]).await;
    assert_eq!(status, 413);
    let (status, _, body) = invoke(&service, None, json!({"prompt": "x".repeat(1500)}), &[]).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["kind"], "prompt_too_large");
    let (status, _, body) = invoke(&service, None, json!({"nope": 1}), &[]).await;
    assert_eq!(status, 400, "{body}");

    // One slot: a second invocation while the first runs gets 503 and Retry-After.
    model
        .push([Turn::text("slow answer").with_fault(Fault::SlowFirstByte(Duration::from_secs(2)))]);
    let slow = invoke_in_background(&service, json!({"prompt": "go", "session_id": "slow"}));
    ping_until(&service, "HealthyBusy", Duration::from_secs(5)).await;
    let (status, headers, body) = invoke(
        &service,
        None,
        json!({"prompt": "me too", "session_id": "other"}),
        &[],
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(body["retryable"], true);
    // What the autoscaler sees meanwhile.
    let metrics = service.metrics().await;
    assert_eq!(
        metrics["travel_agent_invocations_in_flight"], 1.0,
        "{metrics:?}"
    );
    assert_eq!(metrics["travel_agent_invocation_slots"], 1.0);
    assert_eq!(
        metrics["travel_agent_invocations_refused_total{reason=\"busy\"}"],
        1.0
    );
    assert_eq!(metrics["travel_agent_invocations_admitted_total"], 1.0);
    assert_eq!(metrics["travel_agent_draining"], 0.0);
    // Nothing was said about the user yet: no extraction ran or waits.
    assert_eq!(metrics["travel_agent_memory_extractions_pending"], 0.0);
    assert_eq!(
        metrics["travel_agent_memory_extractions_total{outcome=\"done\"}"],
        0.0
    );
    assert_eq!(
        metrics["travel_agent_memory_records_total{result=\"written\"}"],
        0.0
    );
    assert_eq!(slow.await.unwrap()["text"], "slow answer");
    assert_eq!(
        service.metrics().await["travel_agent_invocations_in_flight"],
        0.0
    );

    // The same Idempotency-Key twice: one model call, the same answer.
    model.push([Turn::text("once")]);
    let before = model.received().len();
    let key = [("idempotency-key", "req-42")];
    let (s1, _, first) = invoke(
        &service,
        None,
        json!({"prompt": "book", "session_id": "idem"}),
        &key,
    )
    .await;
    let (s2, _, second) = invoke(
        &service,
        None,
        json!({"prompt": "book", "session_id": "idem"}),
        &key,
    )
    .await;
    assert_eq!((s1, s2), (200, 200), "{first} {second}");
    assert_eq!(first["text"], "once");
    assert_eq!(second["text"], "once");
    assert_eq!(
        model.received().len(),
        before + 1,
        "the model was called once"
    );
    let (_, history) = messages(&service, None, "idem").await;
    assert_eq!(
        history["messages"].as_array().unwrap().len(),
        2,
        "{history}"
    );

    // A user who says something about themselves: one extraction, counted on /metrics.
    model.push([
        Turn::text("Noted."),
        Turn::tool_call(
            "save_memories",
            json!({"memories": [{"namespace": "facts", "content": "Is vegetarian"}]}),
        ),
    ]);
    let (status, _, body) = invoke(
        &service,
        None,
        json!({"prompt": "I'm vegetarian.", "session_id": "diet"}),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let done = "travel_agent_memory_extractions_total{outcome=\"done\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = service.metrics().await;
        if metrics[done] >= 1.0 || std::time::Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(metrics[done], 1.0, "{metrics:?}");
    assert_eq!(
        metrics["travel_agent_memory_records_total{result=\"written\"}"],
        1.0
    );
    assert_eq!(
        metrics["travel_agent_memory_invocations_total{result=\"mined\"}"],
        1.0
    );
    assert_eq!(metrics["travel_agent_memory_extractions_pending"], 0.0);
}

#[test]
fn no_auth_refuses_a_public_address() {
    let err = Service::try_start(
        &["--no-auth", "--listen", "0.0.0.0:0"],
        &[
            ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1".to_owned()),
            ("OPENAI_MODEL", "m".to_owned()),
        ],
    )
    .err()
    .expect("refused");
    assert!(err.contains("--no-auth is for local use only"), "{err}");
    let err = Service::try_start(
        &["--listen", "127.0.0.1:0"],
        &[
            ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1".to_owned()),
            ("OPENAI_MODEL", "m".to_owned()),
        ],
    )
    .err()
    .expect("refused");
    assert!(err.contains("no authentication configured"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_what_outlives_the_drain_resumes_on_a_new_process() {
    let model = MockVllm::start([]).await.expect("model");
    let dir = tempfile::tempdir().expect("dir");
    let env = [
        ("OPENAI_BASE_URL", model.base_url()),
        ("TRAVEL_AGENT_DATA_DIR", dir.path().display().to_string()),
    ];
    let args = [
        "--no-auth",
        "--listen",
        "127.0.0.1:0",
        "--drain-seconds",
        "3",
    ];

    // A run that fits in the drain time finishes; readiness turns false at once; new work is
    // refused; the process exits 0.
    let mut service = Service::start(&args, &env);
    model.push([Turn::text("finished in time")
        .with_fault(Fault::SlowFirstByte(Duration::from_millis(1500)))]);
    let in_time = invoke_in_background(&service, json!({"prompt": "go", "session_id": "drained"}));
    while model.received().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    service.sigterm();
    let started = Instant::now();
    loop {
        let ready = http()
            .get(format!("{}/ready", service.url))
            .send()
            .await
            .unwrap()
            .status();
        if ready == 503 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "readiness still true"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, _, body) = invoke(&service, None, json!({"prompt": "late"}), &[]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["kind"], "draining");
    assert_eq!(in_time.await.unwrap()["text"], "finished in time");
    assert_eq!(service.exit_code(Duration::from_secs(10)).await, Some(0));

    // A run longer than the drain time is cancelled; the process still exits 0 in time, and
    // the session goes on from a new process.
    let mut service = Service::start(&args, &env);
    model.push([Turn::text("too late").with_fault(Fault::SlowFirstByte(Duration::from_secs(30)))]);
    let url = service.url.clone();
    let cut = tokio::spawn(async move {
        http()
            .post(format!("{url}/invocations"))
            .json(&json!({"prompt": "long one", "session_id": "cut"}))
            .send()
            .await
            .expect("send")
            .text()
            .await
            .unwrap_or_default()
    });
    let seen = model.received().len();
    while model.received().len() == seen {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    service.sigterm();
    let stopped = Instant::now();
    assert_eq!(service.exit_code(Duration::from_secs(20)).await, Some(0));
    assert!(
        stopped.elapsed() < Duration::from_secs(3 + 10),
        "{:?}",
        stopped.elapsed()
    );
    let sse = cut.await.unwrap();
    assert!(sse.contains("\"stop_reason\":\"cancelled\""), "{sse}");
    assert!(
        service.log().contains("drain time over"),
        "{}",
        service.log()
    );

    let service = Service::start(&args, &env);
    model.push([Turn::text("resumed")]);
    let (status, _, body) = invoke(
        &service,
        None,
        json!({"prompt": "still there?", "session_id": "cut"}),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["text"], "resumed");
    let (_, history) = messages(&service, None, "cut").await;
    let texts: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .filter_map(|m| m["content"][0]["text"].as_str())
        .collect();
    assert_eq!(texts, ["long one", "still there?"], "{history}");
}

/// Two `serve` processes (no auth) on `model`, sharing sessions in a new S3 bucket named after
/// `prefix`.
async fn two_replicas_on_s3(model: &MockVllm, prefix: &str) -> (Service, Service) {
    let (s3, _) = agent_tests::aws_clients().await;
    let bucket = format!("{prefix}-{:08x}", fastrand::u32(..));
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("bucket");
    let env = [
        ("OPENAI_BASE_URL", model.base_url()),
        ("TRAVEL_AGENT_SESSION_BUCKET", bucket),
    ];
    let args = ["--no-auth", "--listen", "127.0.0.1:0"];
    (Service::start(&args, &env), Service::start(&args, &env))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_leaves_a_valid_session_and_replicas_share_it() {
    let model = MockVllm::start_bench("127.0.0.1:0").await.expect("model");
    let (a, b) = two_replicas_on_s3(&model, "travel-replicas").await;

    // Two replicas serve one session alternately: nothing is lost.
    for (i, replica) in [&a, &b, &a, &b].into_iter().enumerate() {
        let (status, _, body) = invoke(
            replica,
            None,
            json!({"prompt": format!("Weather in Lisbon, round {i}?"), "session_id": "shared"}),
            &[],
        )
        .await;
        assert_eq!(status, 200, "round {i}: {body}");
    }
    let (_, history) = messages(&b, None, "shared").await;
    let messages_now = history["messages"].as_array().unwrap();
    assert_eq!(
        messages_now.len(),
        16,
        "4 rounds of prompt, call, result, answer"
    );
    let prompts: Vec<&str> = messages_now
        .iter()
        .filter_map(|m| m["content"][0]["text"].as_str())
        .filter(|t| t.starts_with("Weather in Lisbon, round"))
        .collect();
    assert_eq!(prompts.len(), 4, "{prompts:?}");

    // A client that reads the first event and goes away: its run goes on to its end (its
    // outcome is recorded), the session stays valid, and the next request on it answers.
    let response = http()
        .post(format!("{}/invocations", a.url))
        .json(&json!({"prompt": "Weather in Porto?", "session_id": "shared"}))
        .send()
        .await
        .expect("send");
    let mut body = response.bytes_stream();
    use futures::StreamExt as _;
    let first = body.next().await.expect("a first event").expect("bytes");
    assert!(String::from_utf8_lossy(&first).contains("event:"));
    drop(body);
    // The run goes on without its client: replica a is busy until it ends.
    ping_until(&a, "Healthy", Duration::from_secs(10)).await;
    let (status, _, answer) = invoke(
        &b,
        None,
        json!({"prompt": "And in Paris?", "session_id": "shared"}),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (_, history) = messages(&a, None, "shared").await;
    let all = history["messages"].as_array().unwrap();
    let uses = all
        .iter()
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .filter(|c| c.get("toolUse").is_some())
        .count();
    let results = all
        .iter()
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .filter(|c| c.get("toolResult").is_some())
        .count();
    assert_eq!(uses, results, "every tool call has its result: {history}");
    // The run whose client left went on to its end: its prompt and its answer are recorded.
    let texts: Vec<&str> = all
        .iter()
        .filter_map(|m| m["content"][0]["text"].as_str())
        .collect();
    let porto = texts
        .iter()
        .position(|t| *t == "Weather in Porto?")
        .expect("the prompt is recorded");
    assert!(
        texts[porto + 1..].iter().any(|t| t.starts_with("w0 w1")),
        "{texts:?}"
    );
}

/// An incoming `traceparent` is the parent of the run's `invoke_agent`, for a streamed run too;
/// the service logs JSON lines with the request id; telemetry is flushed on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_continue_the_caller_s_and_logs_are_json_with_the_trace() {
    let receiver = agent_tests::OtlpReceiver::start();
    let model = MockVllm::start_bench("127.0.0.1:0").await.expect("model");
    let dir = tempfile::tempdir().expect("dir");
    let mut service = Service::start(
        &["--no-auth", "--listen", "127.0.0.1:0"],
        &[
            ("OPENAI_BASE_URL", model.base_url()),
            ("TRAVEL_AGENT_DATA_DIR", dir.path().display().to_string()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.clone()),
            ("OTEL_METRICS_EXPORTER", "none".to_owned()),
        ],
    );
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";
    let response = http()
        .post(format!("{}/invocations", service.url))
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .header("x-request-id", "req-trace-1")
        .json(&json!({"prompt": "Weather in Lisbon?", "session_id": "traced"}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.headers()["x-request-id"], "req-trace-1");
    let body = response.text().await.expect("sse");
    assert!(body.contains("event: stop"), "{body}");
    service.sigterm();
    assert_eq!(service.exit_code(Duration::from_secs(20)).await, Some(0));

    let received = receiver.received.lock().unwrap();
    let spans: Vec<_> = received
        .traces
        .iter()
        .flat_map(|(_, r)| r.resource_spans.iter())
        .flat_map(|rs| rs.scope_spans.iter())
        .flat_map(|ss| ss.spans.iter())
        .collect();
    let invoke = spans
        .iter()
        .find(|s| s.name.starts_with("invoke_agent"))
        .expect("invoke_agent exported before exit");
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(hex(&invoke.trace_id), TRACE);
    assert_eq!(hex(&invoke.parent_span_id), PARENT);

    // JSON lines on stderr: the access line names the request (that lines logged during a run
    // carry its request id and trace is tests/tests/logs.rs).
    let log = service.log();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let access = lines
        .iter()
        .find(|l| l["target"] == "travel_agent::access")
        .unwrap_or_else(|| panic!("no access line:\n{log}"));
    assert_eq!(access["fields"]["request_id"], "req-trace-1");
    assert_eq!(access["fields"]["status"], 200);
}

/// The service on the real local model (llama.cpp + Qwen2.5-Coder-1.5B, `AGENT_LOCAL_MODEL_URL`)
/// in constrained tool-calling mode: the streamed answer comes from the MCP server's tools.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_answers_from_real_tool_results_on_the_real_model() {
    let base_url = std::env::var("AGENT_LOCAL_MODEL_URL").unwrap_or_else(|_| {
        panic!(
            "AGENT_LOCAL_MODEL_URL is not set: run scripts/test.sh, or export \
             AGENT_LOCAL_MODEL_URL=$(scripts/local-model.sh start)"
        )
    });
    let dir = tempfile::tempdir().expect("dir");
    let service = Service::start(
        &["--no-auth", "--listen", "127.0.0.1:0"],
        &[
            ("OPENAI_BASE_URL", base_url),
            ("OPENAI_TOOL_CALLING", "constrained".to_owned()),
            ("OPENAI_TEMPERATURE", "0".to_owned()),
            ("TRAVEL_AGENT_DATA_DIR", dir.path().display().to_string()),
        ],
    );
    let events = invoke_sse(
        &service,
        None,
        json!({"prompt": "What's the weather in Porto today?", "session_id": "real"}),
    )
    .await;
    let tool_results: Vec<String> = events
        .iter()
        .filter(|(e, _)| e == "tool_result")
        .map(|(_, d)| {
            d["result"]["content"][0]["text"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert!(
        tool_results
            .iter()
            .any(|t| t.starts_with("Weather in Porto today: cloudy")),
        "{tool_results:?}"
    );
    let (last, stop) = events.last().expect("events");
    assert_eq!(last, "stop", "{events:?}");
    let answer = stop["message"]["content"][0]["text"]
        .as_str()
        .unwrap_or("")
        .to_lowercase();
    assert!(
        answer.contains("cloudy") || answer.contains("17"),
        "the answer uses the tool's result: {answer}"
    );
}

/// Reads from `stream` until the service closes it (end of stream or a reset), at most
/// `within`; how long that took.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> Duration {
    use tokio::io::AsyncReadExt as _;
    let started = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(
            within.saturating_sub(started.elapsed()),
            stream.read(&mut buf),
        )
        .await
        {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the connection is still open after {within:?}"),
        }
    }
}

/// Clients that stall: half a request head, a connection that sends nothing, and an SSE client
/// that never reads its stream. Each loses its connection after `--stall-seconds`; the run of
/// the one that never reads goes on to its end, and its whole answer is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stall_lose_their_connection_and_runs_go_on() {
    use tokio::io::AsyncWriteExt as _;
    let model = MockVllm::start([]).await.expect("model");
    let dir = tempfile::tempdir().expect("dir");
    let env = [
        ("OPENAI_BASE_URL", model.base_url()),
        ("TRAVEL_AGENT_DATA_DIR", dir.path().display().to_string()),
    ];
    let service = Service::start(
        &[
            "--no-auth",
            "--listen",
            "127.0.0.1:0",
            "--stall-seconds",
            "2",
        ],
        &env,
    );
    let addr = service.url.trim_start_matches("http://").to_owned();

    // Half a request head, then nothing.
    let connected = Instant::now();
    let mut half = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    half.write_all(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Ty")
        .await
        .expect("write");
    // Nothing at all.
    let mut silent = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    // A body sent a byte at a time: refused when the stall time is up (408), however steady.
    let mut dribble = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    dribble
        .write_all(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n{",
        )
        .await
        .expect("write");
    let dribbling = Instant::now();
    let mut answer = Vec::new();
    {
        use tokio::io::AsyncReadExt as _;
        let mut buf = [0u8; 4096];
        loop {
            tokio::select! {
                n = dribble.read(&mut buf) => {
                    let n = n.unwrap_or(0);
                    if n == 0 { break; }
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") { break; }
                }
                () = tokio::time::sleep(Duration::from_millis(300)) => {
                    assert!(dribbling.elapsed() < Duration::from_secs(10), "never refused");
                    let _ = dribble.write_all(b" ").await;
                }
            }
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(dribbling.elapsed() >= Duration::from_millis(1500));
    closed_within(&mut half, Duration::from_secs(10)).await;
    let half_closed = connected.elapsed();
    closed_within(&mut silent, Duration::from_secs(10)).await;
    let silent_closed = connected.elapsed();
    assert!(
        half_closed >= Duration::from_millis(1500),
        "{half_closed:?}"
    );

    // An SSE client with a small receive buffer that never reads, and an answer of 12 MB: far
    // more than the socket buffers hold.
    let word = "w".repeat(4000);
    let answer = vec![word.as_str(); 3000].join(" ");
    model.push([Turn::text(answer.clone())]);
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut stalled = socket
        .connect(addr.parse().expect("addr"))
        .await
        .expect("connect");
    let body = json!({"prompt": "Tell me everything", "session_id": "unread"}).to_string();
    stalled
        .write_all(
            format!(
                "POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    ping_until(&service, "HealthyBusy", Duration::from_secs(5)).await;
    // The run goes on without its reader and ends: the replica is free again.
    ping_until(&service, "Healthy", Duration::from_secs(60)).await;
    let (status, history) = messages(&service, None, "unread").await;
    assert_eq!(status, 200, "{history}");
    let recorded = history["messages"][1]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(recorded.len(), answer.len(), "the whole answer is recorded");
    // And the connection that was never read is closed (what was buffered is read here first).
    closed_within(&mut stalled, Duration::from_secs(30)).await;
    // The service still serves.
    model.push([Turn::text("still here")]);
    let (status, _, body) = invoke(&service, None, json!({"prompt": "hi"}), &[]).await;
    assert_eq!((status, body["text"].as_str()), (200, Some("still here")));
    assert!(
        silent_closed >= Duration::from_millis(1500) && silent_closed < Duration::from_secs(10),
        "{silent_closed:?}"
    );
}

/// An idempotent retry that reaches another replica: during the run it is told the session is
/// busy (retryable), after it gets the recorded outcome; the model is called once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_on_another_replica_never_runs_the_agent_twice() {
    let model = MockVllm::start([]).await.expect("model");
    let (a, b) = two_replicas_on_s3(&model, "travel-idem").await;
    model.push([Turn::text("Booked: one room in Lisbon")
        .with_fault(Fault::SlowFirstByte(Duration::from_secs(2)))]);
    let key = [("idempotency-key", "book-lisbon-1")];
    let request = json!({"prompt": "Book the hotel", "session_id": "trip"});
    let first = invoke_in_background_with(&a, request.clone(), &key);
    ping_until(&a, "HealthyBusy", Duration::from_secs(5)).await;
    // The retry lands on replica b while a still runs it.
    let (status, headers, during) = invoke(&b, None, request.clone(), &key).await;
    assert_eq!(status, 409, "{during}");
    assert_eq!(during["retryable"], true, "{during}");
    assert!(headers.get("retry-after").is_some(), "{headers:?}");
    let first = first.await.unwrap();
    assert_eq!(first["text"], "Booked: one room in Lisbon", "{first}");
    // After it: the recorded outcome, from b, and from a.
    for replica in [&b, &a] {
        let (status, _, again) = invoke(replica, None, request.clone(), &key).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["text"], first["text"]);
    }
    assert_eq!(model.received().len(), 1, "the model was called once");
    let (_, history) = messages(&b, None, "trip").await;
    assert_eq!(
        history["messages"].as_array().unwrap().len(),
        2,
        "one prompt and one answer: {history}"
    );
    // A new key is a new invocation.
    model.push([Turn::text("Booked: a second room")]);
    let (status, _, second) =
        invoke(&b, None, request, &[("idempotency-key", "book-lisbon-2")]).await;
    assert_eq!(
        (status, second["text"].as_str()),
        (200, Some("Booked: a second room"))
    );
    assert_eq!(model.received().len(), 2);
}
