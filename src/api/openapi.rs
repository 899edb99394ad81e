//! The OpenAPI 3.1 document of the HTTP API, served at `GET /api/openapi.json`.
//!
//! Nothing here lists routes: each handler carries its own `#[utoipa::path]`
//! (method, path, parameters with their limits, body, every status it can
//! answer) and the router registers handlers through `utoipa_axum::routes!`,
//! which reads the route's path from that annotation. A route therefore
//! cannot be served without being documented, nor documented under another
//! path. Answers are typed structs deriving `ToSchema`, so a schema cannot
//! drift from what the handler serialises. This module adds what no single
//! handler knows: the `Error` schema, the `bearerAuth` scheme (global, lifted
//! for `/healthz`), and the pipeline names this node is configured with (the
//! `{id}` of `/api/pipelines/{id}/…` is one of them).

use axum::body::Bytes;
use axum::extract::Extension;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::request_body::RequestBody;
use utoipa::openapi::schema::{Schema, SchemaType};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, OpenApi, RefOr, Required, Type, path::ParameterIn};

use crate::config::Settings;

/// Operations open without a token: liveness (load balancers probe it), the
/// dashboard's login state and login, and its static page and assets.
const PUBLIC: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/api/session"),
    ("post", "/api/session"),
    ("get", "/"),
    ("get", "/assets/{file}"),
];

/// The name of the security scheme (`Authorization: Bearer <token>`).
pub const BEARER_AUTH: &str = "bearerAuth";

/// The static part of the document: metadata, tags and the schemas no handler names.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "runyard",
        description = "Durable run execution: trigger pipelines of OS-process jobs, watch, abort. \
                       Every error answer is `{\"error\": \"…\"}` with a 4xx status, or 503 when \
                       the store is unavailable or the work cannot be taken now."
    ),
    components(schemas(super::ErrorBody)),
    tags(
        (name = "pipelines", description = "Configured pipelines and triggering runs"),
        (name = "runs", description = "Runs, their jobs, aborts and webhook deliveries"),
        (name = "jobs", description = "One job: state and output"),
        (name = "events", description = "Server-Sent Event streams"),
        (name = "node", description = "Health, workers and this document"),
    )
)]
pub(super) struct ApiDoc;

/// Completes the document built from the handlers: security, and pipeline names of `settings`.
pub(super) fn finish(mut doc: OpenApi, settings: &Settings) -> OpenApi {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER_AUTH,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "Required on every route but `/healthz` when the server has API tokens \
                     configured; without tokens the header is ignored.",
                ))
                .build(),
        ),
    );
    doc.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
        BEARER_AUTH,
        Vec::<String>::new(),
    )]);
    let names: Vec<String> = settings.pipelines.keys().cloned().collect();
    for (path, item) in doc.paths.paths.iter_mut() {
        let operations = [
            ("get", &mut item.get),
            ("post", &mut item.post),
            ("put", &mut item.put),
            ("delete", &mut item.delete),
            ("patch", &mut item.patch),
        ];
        for (method, op) in operations.into_iter() {
            let Some(op) = op else { continue };
            if let Some(body) = op.request_body.as_mut() {
                optional_body(body);
                // `api::body`: a body that does not arrive in time.
                error_response(
                    op,
                    "408",
                    "The request body did not arrive within 3/4 of client_idle_timeout \
                     (at most 10 s); the connection is closed",
                );
            }
            if PUBLIC.contains(&(method, path.as_str())) {
                // `security: []` lifts the global requirement for this operation.
                op.security = Some(Vec::new());
            } else {
                // With tokens configured, a missing or wrong token is 401; a change made
                // with the session cookie from another origin is 403 (CSRF).
                error_response(
                    op,
                    "401",
                    "No valid token or session (only when the server has API tokens)",
                );
                if method != "get" {
                    error_response(
                        op,
                        "403",
                        "A session-cookie request from another origin (CSRF)",
                    );
                }
            }
            if path.starts_with("/api/pipelines/{id}") && !names.is_empty() {
                for param in op.parameters.iter_mut().flatten() {
                    if param.name == "id" && param.parameter_in == ParameterIn::Path {
                        // A string with the configured names as examples, not an enum:
                        // a client generated from this document must not need
                        // regenerating whenever a pipeline is added.
                        param.schema = Some(RefOr::T(Schema::Object(
                            ObjectBuilder::new()
                                .schema_type(Type::String)
                                .examples(names.clone())
                                .build(),
                        )));
                    }
                }
            }
        }
    }
    doc
}

/// Adds an `ErrorBody` response for `status` unless the handler documents one.
fn error_response(op: &mut utoipa::openapi::path::Operation, status: &str, description: &str) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    op.responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("Error")))
                            .build(),
                    )
                    .build(),
            )
        });
}

/// A handler's `Option<Body>` means "the body may be omitted", not "the body may be JSON
/// `null"` (what utoipa renders: `oneOf: [null, Body]`). Rewrites it to `Body`, not required.
fn optional_body(body: &mut RequestBody) {
    for content in body.content.values_mut() {
        let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema else {
            continue;
        };
        let is_null = |s: &RefOr<Schema>| matches!(s, RefOr::T(Schema::Object(o)) if o.schema_type == SchemaType::Type(Type::Null));
        if one_of.items.len() == 2 && one_of.items.iter().any(is_null) {
            let inner = one_of.items.iter().find(|s| !is_null(s)).cloned();
            content.schema = inner;
            body.required = Some(Required::False);
        }
    }
}

/// The finished document as served, rendered once when the router is built.
#[derive(Clone)]
pub(super) struct Document(pub(super) Bytes);

/// `GET /api/openapi.json`.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "node",
    operation_id = "openapi",
    responses(
        (status = 200, description = "This OpenAPI 3.1 document", content_type = "application/json", body = Object),
    )
)]
pub(super) async fn document(Extension(doc): Extension<Document>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], doc.0)
}
