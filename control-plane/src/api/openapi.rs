//! The OpenAPI 3.1 document of the REST API, generated from the code.
//!
//! Nothing here describes an endpoint by hand: [`ApiDoc`] lists the
//! handlers, and `utoipa` reads their `#[utoipa::path]` annotations and the
//! `ToSchema` types they take and return. Two touches are added here:
//! the `bearer` security scheme, and `x-sentinel-role` on each operation
//! (the role its security requirement names, for readers and generators
//! that ignore scopes on a bearer scheme).
//!
//! The same document is served at `GET /v1/openapi.json` and written to
//! `docs/openapi.json` by `sentinel-cp openapi`; a test keeps the two equal.

use axum::response::{IntoResponse, Response};
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{ErrorBody, configs, console, discovery, fleet, rollouts, tokens};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sentinel control plane",
        description = "Versioned configuration, rollback and fleet state of a Sentinel proxy fleet. \
Every call under /v1 needs `Authorization: Bearer TOKEN` with the role named by the operation's \
security requirement (`read` < `write` < `admin`). Every error is an `ErrorBody`. Field names \
under /v1 are stable: fields may be added, never renamed or removed, within /v1.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        configs::apply, configs::list, configs::active, configs::get, configs::trace, configs::diff,
        configs::rollback, configs::activations, configs::audit,
        rollouts::list, rollouts::get, rollouts::promote, rollouts::pause, rollouts::resume,
        rollouts::abort,
        fleet::nodes, fleet::node_events, fleet::status, fleet::health,
        discovery::discovery, console::events, console::convergence,
        console::whoami,
        tokens::create, tokens::list, tokens::revoke,
        super::healthz, super::readyz, super::metrics, openapi_json,
    ),
    components(schemas(ErrorBody)),
    modifiers(&Security),
    tags(
        (name = "configs", description = "versions, apply, diff, rollback, history"),
        (name = "rollouts", description = "staged rollouts: stages, gates, per-node state; promote, pause, resume, abort"),
        (name = "fleet", description = "proxies, their versions and NACKs, upstream health"),
        (name = "tokens", description = "API and join tokens, audit trail (admin)"),
        (name = "operations", description = "liveness, readiness, metrics, this document"),
    ),
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token (`sentinelctl token create NAME --role ROLE`, or \
                         `--bootstrap-token`). The scopes of each requirement name the role.",
                    ))
                    .build(),
            ),
        );
        for item in doc.paths.paths.values_mut() {
            if let Some(get) = &mut item.get {
                conditional_read(get);
            }
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let role = op
                    .security
                    .as_ref()
                    .and_then(|reqs| serde_json::to_value(reqs).ok())
                    .and_then(|v| v[0]["bearer"][0].as_str().map(str::to_string))
                    .unwrap_or_else(|| "none".to_string());
                let ext = ExtensionsBuilder::new()
                    .add("x-sentinel-role", role)
                    .build();
                match &mut op.extensions {
                    Some(e) => e.merge(ext),
                    None => op.extensions = Some(ext),
                }
            }
        }
    }
}

/// What the `etag` middleware does to every `GET`, in the document: an
/// optional `If-None-Match`, an `ETag` on 200, and 304.
fn conditional_read(op: &mut utoipa::openapi::path::Operation) {
    use utoipa::openapi::header::HeaderBuilder;
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::{ObjectBuilder, RefOr, Required, ResponseBuilder, Type};
    let string = || ObjectBuilder::new().schema_type(Type::String).build();
    op.parameters.get_or_insert_with(Vec::new).push(
        ParameterBuilder::new()
            .name("If-None-Match")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "An `ETag` from an earlier answer: 304 with no body if the answer is unchanged",
            ))
            .schema(Some(string()))
            .build(),
    );
    if let Some(RefOr::T(ok)) = op.responses.responses.get_mut("200") {
        ok.headers.insert(
            "ETag".to_string(),
            HeaderBuilder::new()
                .schema(string())
                .description(Some("Strong validator of this answer (a hash of the body)"))
                .build(),
        );
    }
    op.responses.responses.insert(
        "304".to_string(),
        RefOr::T(
            ResponseBuilder::new()
                .description("Not modified: `If-None-Match` names the current `ETag`")
                .build(),
        ),
    );
}

/// The document as pretty JSON with a final newline: what is served and
/// what `docs/openapi.json` holds, byte for byte.
pub fn json() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot render the document: {e}\"}}"));
    text.push('\n');
    text
}

/// This document.
#[utoipa::path(operation_id = "openapi", get, path = "/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "the OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi_json() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json(),
    )
        .into_response()
}

pub use openapi_json as serve;
