//! The top floor: connections ([`server`], [`tls`]), who may pull
//! ([`auth`]), the distribution API ([`registry`]) and the pages ([`web`]).

pub mod auth;
pub mod registry;
pub mod request;
pub mod server;
pub mod tls;
pub mod web;
