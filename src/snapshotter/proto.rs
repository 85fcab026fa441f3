//! containerd's snapshots API (`containerd.services.snapshots.v1`, from
//! containerd's `api/services/snapshots/v1/snapshots.proto` and
//! `api/types/mount.proto`): the messages declared by hand with their
//! field numbers, and the gRPC service routed by hand, so that the build
//! needs no protoc and no generated code.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codegen::http;
use tonic::{Request, Response, Status};

#[derive(Clone, PartialEq, prost::Message)]
pub struct Mount {
    #[prost(string, tag = "1")]
    pub r#type: String,
    #[prost(string, tag = "2")]
    pub source: String,
    #[prost(string, tag = "3")]
    pub target: String,
    #[prost(string, repeated, tag = "4")]
    pub options: Vec<String>,
}

/// Prepare and View take the same fields.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PrepareRequest {
    #[prost(string, tag = "1")]
    pub snapshotter: String,
    #[prost(string, tag = "2")]
    pub key: String,
    #[prost(string, tag = "3")]
    pub parent: String,
    #[prost(map = "string, string", tag = "4")]
    pub labels: HashMap<String, String>,
}

/// The answer of Prepare, View and Mounts.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MountsResponse {
    #[prost(message, repeated, tag = "1")]
    pub mounts: Vec<Mount>,
}

/// Mounts, Remove, Stat and Usage name one snapshot.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyRequest {
    #[prost(string, tag = "1")]
    pub snapshotter: String,
    #[prost(string, tag = "2")]
    pub key: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CommitRequest {
    #[prost(string, tag = "1")]
    pub snapshotter: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub key: String,
    #[prost(map = "string, string", tag = "4")]
    pub labels: HashMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Kind {
    Unknown = 0,
    View = 1,
    Active = 2,
    Committed = 3,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Info {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub parent: String,
    #[prost(enumeration = "Kind", tag = "3")]
    pub kind: i32,
    #[prost(message, optional, tag = "4")]
    pub created_at: Option<prost_types::Timestamp>,
    #[prost(message, optional, tag = "5")]
    pub updated_at: Option<prost_types::Timestamp>,
    #[prost(map = "string, string", tag = "6")]
    pub labels: HashMap<String, String>,
}

/// The answer of Stat and Update.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InfoResponse {
    #[prost(message, optional, tag = "1")]
    pub info: Option<Info>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateRequest {
    #[prost(string, tag = "1")]
    pub snapshotter: String,
    #[prost(message, optional, tag = "2")]
    pub info: Option<Info>,
    #[prost(message, optional, tag = "3")]
    pub update_mask: Option<prost_types::FieldMask>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListRequest {
    #[prost(string, tag = "1")]
    pub snapshotter: String,
    #[prost(string, repeated, tag = "2")]
    pub filters: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListResponse {
    #[prost(message, repeated, tag = "1")]
    pub info: Vec<Info>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UsageResponse {
    #[prost(int64, tag = "1")]
    pub size: i64,
    #[prost(int64, tag = "2")]
    pub inodes: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CleanupRequest {
    #[prost(string, tag = "1")]
    pub snapshotter: String,
}

type Reply<T> = Result<Response<T>, Status>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The service, one method per RPC.
#[tonic::async_trait]
pub trait Snapshots: Send + Sync + 'static {
    async fn prepare(&self, r: PrepareRequest) -> Reply<MountsResponse>;
    async fn view(&self, r: PrepareRequest) -> Reply<MountsResponse>;
    async fn mounts(&self, r: KeyRequest) -> Reply<MountsResponse>;
    async fn commit(&self, r: CommitRequest) -> Reply<()>;
    async fn remove(&self, r: KeyRequest) -> Reply<()>;
    async fn stat(&self, r: KeyRequest) -> Reply<InfoResponse>;
    async fn update(&self, r: UpdateRequest) -> Reply<InfoResponse>;
    /// All of it at once; the server sends it in messages of 100.
    async fn list(&self, r: ListRequest) -> Result<Vec<Info>, Status>;
    async fn usage(&self, r: KeyRequest) -> Reply<UsageResponse>;
    async fn cleanup(&self, r: CleanupRequest) -> Reply<()>;
}

/// The tower service tonic's server runs: a request's path picks the method.
pub struct Server<T>(pub Arc<T>);

impl<T> Clone for Server<T> {
    fn clone(&self) -> Self {
        Server(self.0.clone())
    }
}

impl<T: Snapshots> tonic::server::NamedService for Server<T> {
    const NAME: &'static str = "containerd.services.snapshots.v1.Snapshots";
}

/// A unary method as tonic's server wants it.
struct Unary<F>(F);

impl<Req, Resp, F> tonic::server::UnaryService<Req> for Unary<F>
where
    F: FnMut(Req) -> BoxFuture<Reply<Resp>>,
{
    type Response = Resp;
    type Future = BoxFuture<Reply<Resp>>;
    fn call(&mut self, request: Request<Req>) -> Self::Future {
        (self.0)(request.into_inner())
    }
}

struct Streaming<T>(Arc<T>);

impl<T: Snapshots> tonic::server::ServerStreamingService<ListRequest> for Streaming<T> {
    type Response = ListResponse;
    type ResponseStream = tokio_stream::Iter<std::vec::IntoIter<Result<ListResponse, Status>>>;
    type Future = BoxFuture<Reply<Self::ResponseStream>>;
    fn call(&mut self, request: Request<ListRequest>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move {
            let all = svc.list(request.into_inner()).await?;
            let pages: Vec<_> = all
                .chunks(100)
                .map(|c| Ok(ListResponse { info: c.to_vec() }))
                .collect();
            Ok(Response::new(tokio_stream::iter(pages)))
        })
    }
}

fn unary<Req, Resp>(
    request: http::Request<tonic::body::Body>,
    method: impl FnMut(Req) -> BoxFuture<Reply<Resp>> + Send + 'static,
) -> BoxFuture<Result<http::Response<tonic::body::Body>, Infallible>>
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
{
    Box::pin(async move {
        let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<Resp, Req>::default());
        Ok(grpc.unary(Unary(method), request).await)
    })
}

/// `svc.$m(r)` as a boxed future, for [`unary`].
macro_rules! method {
    ($svc:expr, $m:ident) => {{
        let svc = $svc.clone();
        move |r| {
            let svc = svc.clone();
            Box::pin(async move { svc.$m(r).await }) as BoxFuture<_>
        }
    }};
}

impl<T: Snapshots> tower::Service<http::Request<tonic::body::Body>> for Server<T> {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let svc = &self.0;
        let path = request.uri().path();
        let method = path
            .strip_prefix("/containerd.services.snapshots.v1.Snapshots/")
            .unwrap_or("");
        match method {
            "Prepare" => unary(request, method!(svc, prepare)),
            "View" => unary(request, method!(svc, view)),
            "Mounts" => unary(request, method!(svc, mounts)),
            "Commit" => unary(request, method!(svc, commit)),
            "Remove" => unary(request, method!(svc, remove)),
            "Stat" => unary(request, method!(svc, stat)),
            "Update" => unary(request, method!(svc, update)),
            "Usage" => unary(request, method!(svc, usage)),
            "Cleanup" => unary(request, method!(svc, cleanup)),
            "List" => {
                let svc = svc.clone();
                Box::pin(async move {
                    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                        ListResponse,
                        ListRequest,
                    >::default());
                    Ok(grpc.server_streaming(Streaming(svc), request).await)
                })
            }
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}
