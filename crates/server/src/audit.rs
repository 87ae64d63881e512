//! The ledger for auditors: the latest signed checkpoint, and inclusion and consistency proofs
//! as `keel_ledger::ProofDocument`s, the documented shape that `keel audit` checks offline.

use axum::extract::State;
use axum::Json;
use keel_ledger::ProofDocument;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Authenticated;
use crate::extract::ApiQuery;
use crate::problem::{Kind, Problem, ProblemBody};
use crate::AppState;

/// The latest signed checkpoint of the ledger.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointBody {
    /// Number of leaves the checkpoint covers.
    pub tree_size: u64,
    /// The Merkle tree root (RFC 6962), hex.
    pub root: String,
    /// The C2SP signed note, verbatim: the text that the signature covers, and the signature.
    pub note: String,
    /// The key that verifies `note` (`name+keyid+base64`).
    pub verifier_key: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InclusionQuery {
    /// The leaf index to prove.
    pub index: u64,
    /// The tree size of a stored checkpoint; default the latest.
    pub size: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsistencyQuery {
    /// The older tree size; 0 gives the empty proof from the empty root.
    pub from: u64,
    /// The tree size of a stored checkpoint; default the latest.
    pub to: Option<u64>,
}

/// The latest signed checkpoint.
#[utoipa::path(
    get,
    path = "/v1/audit/checkpoint",
    tag = "audit",
    responses(
        (status = 200, body = CheckpointBody),
        (status = 404, description = "No checkpoint has been written yet", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn checkpoint(
    State(state): State<AppState>,
    _caller: Authenticated,
) -> Result<Json<CheckpointBody>, Problem> {
    let verifier_key = state.engine.verifier_key();
    let latest = keel_engine::audit::latest_checkpoint(state.engine.store(), &verifier_key).await?;
    let Some((signed, note)) = latest else {
        return Err(Problem::new(
            Kind::NoCheckpoint,
            "no checkpoint has been written yet; the sequencer writes one within a second of the first entry",
        ));
    };
    Ok(Json(CheckpointBody {
        tree_size: signed.size,
        root: hex::encode(signed.root),
        note,
        verifier_key,
    }))
}

/// An inclusion proof of one leaf against a signed checkpoint.
#[utoipa::path(
    get,
    path = "/v1/audit/proof/inclusion",
    tag = "audit",
    params(InclusionQuery),
    responses(
        (status = 200, description = "A `keel_ledger::ProofDocument` of kind inclusion", body = serde_json::Value),
        (status = 400, description = "Bad parameters", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No checkpoint of that size, or the leaf is beyond it", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn inclusion_proof(
    State(state): State<AppState>,
    _caller: Authenticated,
    ApiQuery(query): ApiQuery<InclusionQuery>,
) -> Result<Json<ProofDocument>, Problem> {
    keel_engine::audit::inclusion(state.engine.store(), query.index, query.size)
        .await
        .map(Json)
        .map_err(bad_proof_request)
}

/// A consistency proof between an older tree size and a signed checkpoint.
#[utoipa::path(
    get,
    path = "/v1/audit/proof/consistency",
    tag = "audit",
    params(ConsistencyQuery),
    responses(
        (status = 200, description = "A `keel_ledger::ProofDocument` of kind consistency", body = serde_json::Value),
        (status = 400, description = "Bad parameters", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No checkpoint of that size, or `from` is beyond it", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn consistency_proof(
    State(state): State<AppState>,
    _caller: Authenticated,
    ApiQuery(query): ApiQuery<ConsistencyQuery>,
) -> Result<Json<ProofDocument>, Problem> {
    keel_engine::audit::consistency(state.engine.store(), query.from, query.to)
        .await
        .map(Json)
        .map_err(bad_proof_request)
}

/// A leaf or tree size beyond the checkpoint is not (yet) in the ledger: 404, like a size
/// without a checkpoint; a damaged ledger stays a 500 (`Problem::from`).
fn bad_proof_request(error: keel_engine::Error) -> Problem {
    match error {
        keel_engine::Error::BadProofRequest(message) => Problem::new(Kind::NotFound, message),
        keel_engine::Error::NoCheckpoint(message) => Problem::new(Kind::NoCheckpoint, message),
        other => Problem::from(other),
    }
}
