//! The local API server (axum on a unix socket). Handlers are thin:
//! validate, call the store, map errors in one place.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use skiff_proto::ImageRef;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::containers;
use super::{ErrorBody, ImportRequest, PullLine, PullRequest};
use crate::images::{ImageError, ImageStore, ImageSummary};

/// What handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub images: Arc<ImageStore>,
    pub runtime: Arc<crate::runtime::Runtime>,
}

/// An error response: one status, one code, one line.
#[derive(Debug)]
pub struct ApiError(StatusCode, ErrorBody);

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self(
            status,
            ErrorBody {
                code: code.into(),
                message: message.into(),
            },
        )
    }

    pub fn body(&self) -> &ErrorBody {
        &self.1
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        let (status, code) = match &e {
            ImageError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ImageError::BadReference(_) | ImageError::Import { .. } => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            ImageError::Layer { .. } | ImageError::NoPlatform(_) | ImageError::BadManifest(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "refused")
            }
            ImageError::Registry(_) | ImageError::DigestMismatch { .. } => {
                (StatusCode::BAD_GATEWAY, "registry")
            }
            ImageError::Db(_) | ImageError::Io(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        Self::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

fn parse_ref(s: &str) -> Result<ImageRef, ApiError> {
    s.parse::<ImageRef>()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))
}

/// The routes of the local API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/version", get(version))
        .route("/v1/images", get(list_images).delete(remove_image))
        .route("/v1/images/inspect", get(inspect_image))
        .route("/v1/images/pull", post(pull_image))
        .route("/v1/images/import", post(import_image))
        .route("/v1/images/prune", post(prune_images))
        .route("/v1/system/df", get(disk_usage))
        .route(
            "/v1/containers",
            get(containers::list).delete(containers::remove),
        )
        .route("/v1/containers/run", post(containers::run))
        .route("/v1/containers/inspect", get(containers::inspect))
        .route("/v1/containers/start", post(containers::start))
        .route("/v1/containers/stop", post(containers::stop))
        .route("/v1/containers/kill", post(containers::kill))
        .route("/v1/containers/wait", post(containers::wait))
        .route("/v1/containers/logs", get(containers::logs))
        .route("/v1/containers/exec", post(containers::exec))
        .with_state(state)
}

async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "version": crate::VERSION }))
}

async fn list_images(State(s): State<AppState>) -> ApiResult<Vec<ImageSummary>> {
    Ok(Json(s.images.list()?))
}

#[derive(Debug, Deserialize)]
struct NameQuery {
    name: String,
}

async fn inspect_image(
    State(s): State<AppState>,
    Query(q): Query<NameQuery>,
) -> ApiResult<crate::images::ImageRecord> {
    Ok(Json(s.images.get(&q.name)?))
}

async fn remove_image(
    State(s): State<AppState>,
    Query(q): Query<NameQuery>,
) -> ApiResult<crate::images::PruneReport> {
    Ok(Json(
        s.images
            .remove(&q.name, &containers::in_use(&s.runtime))
            .await?,
    ))
}

async fn prune_images(State(s): State<AppState>) -> ApiResult<crate::images::PruneReport> {
    Ok(Json(s.images.prune(&containers::in_use(&s.runtime)).await?))
}

async fn disk_usage(State(s): State<AppState>) -> ApiResult<crate::images::DiskUsage> {
    Ok(Json(s.images.disk_usage()?))
}

async fn import_image(
    State(s): State<AppState>,
    Json(req): Json<ImportRequest>,
) -> ApiResult<Vec<ImageSummary>> {
    if !Path::new(&req.path).is_absolute() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("path {:?} must be absolute", req.path),
        ));
    }
    let name = req.name.as_deref().map(parse_ref).transpose()?;
    let records = s.images.import(Path::new(&req.path), name.as_ref()).await?;
    Ok(Json(records.iter().map(Into::into).collect()))
}

fn line(l: &PullLine) -> Result<Bytes, Infallible> {
    let mut v = serde_json::to_vec(l).unwrap_or_default();
    v.push(b'\n');
    Ok(Bytes::from(v))
}

/// Streams pull progress as newline-delimited JSON; the last line is
/// `{"done": …}` or `{"error": …}`.
async fn pull_image(
    State(s): State<AppState>,
    Json(req): Json<PullRequest>,
) -> Result<Response, ApiError> {
    let reference = parse_ref(&req.reference)?;
    let (out_tx, out_rx) = mpsc::unbounded_channel::<PullLine>();
    let store = Arc::clone(&s.images);
    tokio::spawn(async move {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let pull = store.pull(&reference, tx);
        tokio::pin!(pull);
        let result = loop {
            tokio::select! {
                Some(ev) = rx.recv() => { let _ = out_tx.send(PullLine::Event(ev)); }
                r = &mut pull => break r,
            }
        };
        while let Ok(ev) = rx.try_recv() {
            let _ = out_tx.send(PullLine::Event(ev));
        }
        let last = match result {
            Ok(rec) => PullLine::Done {
                done: (&rec).into(),
            },
            Err(e) => {
                tracing::warn!(image = %reference, error = %e, "pull failed");
                let e = ApiError::from(e);
                PullLine::Failed {
                    error: ErrorBody {
                        code: e.body().code.clone(),
                        message: format!("{reference}: {}", e.body().message),
                    },
                }
            }
        };
        let _ = out_tx.send(last);
    });
    let stream = futures::stream::unfold(out_rx, |mut rx| async move {
        rx.recv().await.map(|l| (line(&l), rx))
    });
    Ok(Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_default())
}

/// Serves the API on `socket` until `shutdown` is cancelled.
pub async fn serve(
    socket: &Path,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A socket file left by a crashed agent: replace it, unless an agent
    // still answers on it.
    if socket.exists() {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{}: another agent is listening", socket.display()),
            ));
        }
        std::fs::remove_file(socket)?;
    }
    let listener = tokio::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))?;
    tracing::info!(socket = %socket.display(), "local API listening");
    let result = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    let _ = std::fs::remove_file(socket);
    result
}
