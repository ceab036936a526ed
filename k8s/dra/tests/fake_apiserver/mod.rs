//! A fake Kubernetes API server for the DRA driver's tests: HTTP/1.1 on a loopback port, the
//! part of `resource.k8s.io/v1` the driver uses (ResourceSlices: list with field selectors,
//! create with `generateName`, replace with `resourceVersion` conflicts, delete;
//! ResourceClaims: get), bearer-token identities bound to nodes, and what a node's identity
//! may do enforced as the driver's ValidatingAdmissionPolicy does (only its own node's
//! slices). Every request is logged for the tests to look at.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

const SLICES: &str = "/apis/resource.k8s.io/v1/resourceslices";

#[derive(Default)]
struct State {
    slices: BTreeMap<String, Value>,
    claims: BTreeMap<(String, String), Value>,
    /// token → node name.
    tokens: BTreeMap<String, String>,
    version: u64,
    names: u64,
    log: Vec<String>,
}

/// The server; stops with the test process (its thread blocks in `accept`).
#[derive(Clone)]
pub struct FakeApiServer {
    pub url: String,
    state: Arc<Mutex<State>>,
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `spec.nodeName=a,spec.driver=b` → pairs.
fn field_selector(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == "fieldSelector")
        .flat_map(|(_, v)| {
            percent_decode(v)
                .split(',')
                .filter_map(|t| {
                    t.split_once('=')
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn field(obj: &Value, path: &str) -> String {
    path.split('.')
        .try_fold(obj, |v, k| v.get(k))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

impl FakeApiServer {
    pub fn start() -> FakeApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake API server");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = FakeApiServer {
            url,
            state: Arc::default(),
        };
        let s = server.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || s.serve(conn));
            }
        });
        server
    }

    /// Lets `token` act as the node `node` (a service account token bound to a pod on it).
    pub fn add_token(&self, token: &str, node: &str) {
        let mut st = self.state.lock().unwrap();
        st.tokens.insert(token.into(), node.into());
    }

    /// A kubeconfig that reaches this server as `token`.
    pub fn kubeconfig(&self, token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: node\n  user:\n    token: {token}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: node\ncurrent-context: fake\n",
            self.url
        )
    }

    /// Stores a ResourceClaim (as the scheduler would leave it, allocated).
    pub fn put_claim(&self, claim: Value) {
        let mut st = self.state.lock().unwrap();
        st.version += 1;
        let mut claim = claim;
        claim["metadata"]["resourceVersion"] = json!(st.version.to_string());
        let key = (
            field(&claim, "metadata.namespace"),
            field(&claim, "metadata.name"),
        );
        st.claims.insert(key, claim);
    }

    /// The ResourceSlices of `node`.
    pub fn slices_of(&self, node: &str) -> Vec<Value> {
        let st = self.state.lock().unwrap();
        st.slices
            .values()
            .filter(|s| field(s, "spec.nodeName") == node)
            .cloned()
            .collect()
    }

    /// Stores a slice as someone else wrote it (no checks).
    pub fn put_slice(&self, mut slice: Value) {
        let mut st = self.state.lock().unwrap();
        st.version += 1;
        slice["metadata"]["resourceVersion"] = json!(st.version.to_string());
        let name = field(&slice, "metadata.name");
        st.slices.insert(name, slice);
    }

    /// Deletes every slice of `node`, as a starting kubelet does.
    pub fn wipe(&self, node: &str) {
        let mut st = self.state.lock().unwrap();
        st.slices.retain(|_, s| field(s, "spec.nodeName") != node);
    }

    /// Requests so far (`METHOD path`).
    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    fn serve(&self, conn: TcpStream) {
        if let Err(e) = conn.set_read_timeout(Some(std::time::Duration::from_secs(10))) {
            eprintln!("fake API server: cannot set a read timeout: {e}");
            return;
        }
        let mut reader = BufReader::new(match conn.try_clone() {
            Ok(c) => c,
            Err(_) => return,
        });
        let mut writer = conn;
        // Several requests may come over one connection.
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let mut parts = line.split_whitespace();
            let (method, target) = (
                parts.next().unwrap_or("").to_string(),
                parts.next().unwrap_or("").to_string(),
            );
            let mut headers = BTreeMap::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 {
                    return;
                }
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            let token = headers
                .get("authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
                .unwrap_or("")
                .to_string();
            let (code, value) = self.handle(&method, &target, &token, &body);
            let text = value.to_string();
            let reason = match code {
                200 => "OK",
                201 => "Created",
                401 => "Unauthorized",
                403 => "Forbidden",
                404 => "Not Found",
                409 => "Conflict",
                _ => "Error",
            };
            let resp = format!(
                "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            );
            if writer.write_all(resp.as_bytes()).is_err() {
                return;
            }
        }
    }

    fn handle(&self, method: &str, target: &str, token: &str, body: &[u8]) -> (u16, Value) {
        let mut st = self.state.lock().unwrap();
        st.log.push(format!("{method} {target}"));
        let Some(node) = st.tokens.get(token).cloned() else {
            return status(401, "Unauthorized", "Unauthorized");
        };
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return status(400, "BadRequest", &e.to_string()),
            }
        };
        // The driver's ValidatingAdmissionPolicy: a node's identity writes its own slices.
        let own = |s: &Value| field(s, "spec.nodeName") == node;
        let forbidden = || {
            status(
                403,
                "Forbidden",
                &format!("ResourceSlices of node {node} only"),
            )
        };
        if path == SLICES {
            match method {
                "GET" => {
                    let sel = field_selector(query);
                    let items: Vec<Value> = st
                        .slices
                        .values()
                        .filter(|s| sel.iter().all(|(k, v)| field(s, k) == *v))
                        .cloned()
                        .collect();
                    return (
                        200,
                        json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSliceList",
                               "metadata": {"resourceVersion": st.version.to_string()}, "items": items}),
                    );
                }
                "POST" => {
                    if !own(&body) {
                        return forbidden();
                    }
                    let mut obj = body;
                    st.names += 1;
                    st.version += 1;
                    let name = match field(&obj, "metadata.name") {
                        n if !n.is_empty() => n,
                        _ => format!("{}{:05x}", field(&obj, "metadata.generateName"), st.names),
                    };
                    if st.slices.contains_key(&name) {
                        return status(409, "AlreadyExists", &format!("{name} exists"));
                    }
                    obj["apiVersion"] = json!("resource.k8s.io/v1");
                    obj["kind"] = json!("ResourceSlice");
                    obj["metadata"]["name"] = json!(name);
                    obj["metadata"]["uid"] = json!(format!("uid-{}", st.names));
                    obj["metadata"]["resourceVersion"] = json!(st.version.to_string());
                    obj["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
                    st.slices.insert(name, obj.clone());
                    return (201, obj);
                }
                _ => return status(405, "MethodNotAllowed", method),
            }
        }
        if let Some(name) = path.strip_prefix(&format!("{SLICES}/")) {
            let Some(current) = st.slices.get(name).cloned() else {
                return status(
                    404,
                    "NotFound",
                    &format!("resourceslices \"{name}\" not found"),
                );
            };
            match method {
                "GET" => return (200, current),
                "PUT" => {
                    if !own(&body) || !own(&current) {
                        return forbidden();
                    }
                    if field(&body, "metadata.resourceVersion")
                        != field(&current, "metadata.resourceVersion")
                    {
                        return status(409, "Conflict", "the object has been modified");
                    }
                    let mut obj = body;
                    st.version += 1;
                    obj["apiVersion"] = json!("resource.k8s.io/v1");
                    obj["kind"] = json!("ResourceSlice");
                    obj["metadata"]["resourceVersion"] = json!(st.version.to_string());
                    st.slices.insert(name.to_string(), obj.clone());
                    return (200, obj);
                }
                "DELETE" => {
                    if !own(&current) {
                        return forbidden();
                    }
                    st.slices.remove(name);
                    return (200, current);
                }
                _ => return status(405, "MethodNotAllowed", method),
            }
        }
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        if let [
            "apis",
            "resource.k8s.io",
            "v1",
            "namespaces",
            ns,
            "resourceclaims",
            name,
        ] = parts.as_slice()
        {
            if method != "GET" {
                return forbidden();
            }
            return match st.claims.get(&(ns.to_string(), name.to_string())) {
                Some(c) => (200, c.clone()),
                None => status(
                    404,
                    "NotFound",
                    &format!("resourceclaims.resource.k8s.io \"{name}\" not found"),
                ),
            };
        }
        status(404, "NotFound", &format!("no route for {path}"))
    }
}
