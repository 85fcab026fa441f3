//! `cri-pull`: a tiny CRI client for the end-to-end tests.
//!
//! kubelet and crictl are not available where the tests run, yet what we want
//! to check is what a Kubernetes node does: containerd's CRI plugin pulling an
//! image from flakeport (through its own resolver, registry mirrors and
//! snapshotter), not what `ctr` does. So this speaks the Kubernetes CRI gRPC
//! API, package `runtime.v1`, service `ImageService`, over a unix socket.
//!
//! The messages mirror k8s.io/cri-api/pkg/apis/runtime/v1/api.proto; they are
//! declared by hand (no protoc, no build script) with the real field numbers,
//! and only the fields used here. Unknown fields in replies are skipped by prost.
//!
//! Usage:
//!   cri-pull --socket PATH pull IMAGE [--annotation k=v]...   prints image_ref
//!   cri-pull --socket PATH status IMAGE                       prints JSON or null
//!   cri-pull --socket PATH remove IMAGE

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hyper_util::rt::TokioIo;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint, Uri};

/// runtime.v1.ImageSpec
#[derive(Clone, PartialEq, prost::Message)]
struct ImageSpec {
    #[prost(string, tag = "1")]
    image: String,
    #[prost(map = "string, string", tag = "2")]
    annotations: HashMap<String, String>,
}

/// runtime.v1.Image (the fields we report)
#[derive(Clone, PartialEq, prost::Message)]
struct Image {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, repeated, tag = "2")]
    repo_tags: Vec<String>,
    #[prost(string, repeated, tag = "3")]
    repo_digests: Vec<String>,
    #[prost(uint64, tag = "4")]
    size: u64,
}

/// runtime.v1.PullImageRequest (auth = 2 and sandbox_config = 3 left unset)
#[derive(Clone, PartialEq, prost::Message)]
struct PullImageRequest {
    #[prost(message, optional, tag = "1")]
    image: Option<ImageSpec>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PullImageResponse {
    #[prost(string, tag = "1")]
    image_ref: String,
}

/// runtime.v1.ImageStatusRequest (verbose = 2 left false)
#[derive(Clone, PartialEq, prost::Message)]
struct ImageStatusRequest {
    #[prost(message, optional, tag = "1")]
    image: Option<ImageSpec>,
}

/// runtime.v1.ImageStatusResponse; `image` is unset when the image is absent.
#[derive(Clone, PartialEq, prost::Message)]
struct ImageStatusResponse {
    #[prost(message, optional, tag = "1")]
    image: Option<Image>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RemoveImageRequest {
    #[prost(message, optional, tag = "1")]
    image: Option<ImageSpec>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RemoveImageResponse {}

#[derive(Parser)]
#[command(about = "Minimal CRI ImageService client (PullImage, ImageStatus, RemoveImage)")]
struct Cli {
    /// containerd's CRI socket (the containerd gRPC address).
    #[arg(long)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// PullImage; prints the returned image_ref.
    Pull {
        image: String,
        /// ImageSpec annotation, k=v (repeatable).
        #[arg(long = "annotation", value_parser = parse_kv)]
        annotations: Vec<(String, String)>,
    },
    /// ImageStatus; prints {"id","repo_tags","repo_digests","size"} or null.
    Status { image: String },
    /// RemoveImage.
    Remove { image: String },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected k=v")?;
    Ok((k.to_string(), v.to_string()))
}

fn spec(image: String, annotations: HashMap<String, String>) -> Option<ImageSpec> {
    Some(ImageSpec { image, annotations })
}

async fn call<Req, Resp>(channel: &Channel, method: &'static str, req: Req) -> anyhow::Result<Resp>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.context("CRI socket not ready")?;
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    let path = PathAndQuery::from_static(method);
    let resp = grpc.unary(tonic::Request::new(req), path, codec).await?;
    Ok(resp.into_inner())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let socket = cli.socket.clone();
    // The URI is ignored: every connection goes to the unix socket.
    let channel = Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .with_context(|| format!("connecting to {}", cli.socket.display()))?;

    match cli.command {
        Command::Pull { image, annotations } => {
            let req = PullImageRequest {
                image: spec(image, annotations.into_iter().collect()),
            };
            let resp: PullImageResponse =
                call(&channel, "/runtime.v1.ImageService/PullImage", req).await?;
            println!("{}", resp.image_ref);
        }
        Command::Status { image } => {
            let req = ImageStatusRequest {
                image: spec(image, HashMap::new()),
            };
            let resp: ImageStatusResponse =
                call(&channel, "/runtime.v1.ImageService/ImageStatus", req).await?;
            let json = match resp.image {
                None => serde_json::Value::Null,
                Some(i) => serde_json::json!({
                    "id": i.id, "repo_tags": i.repo_tags, "repo_digests": i.repo_digests, "size": i.size,
                }),
            };
            println!("{json}");
        }
        Command::Remove { image } => {
            let req = RemoveImageRequest {
                image: spec(image, HashMap::new()),
            };
            let _: RemoveImageResponse =
                call(&channel, "/runtime.v1.ImageService/RemoveImage", req).await?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Cli::parse()).await {
        // A gRPC failure prints the server's status message as is, so that
        // tests can match on containerd's wording.
        match e.downcast_ref::<tonic::Status>() {
            Some(status) => eprintln!("cri-pull: {:?}: {}", status.code(), status.message()),
            None => eprintln!("cri-pull: {e:#}"),
        }
        std::process::exit(1);
    }
}
