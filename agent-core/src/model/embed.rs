//! Embedding models: text in, vectors out, for retrieval by meaning (long-term memory's hybrid
//! search). [`OpenAiEmbedder`](super::openai::OpenAiEmbedder) speaks `/v1/embeddings`, which
//! vLLM, llama.cpp's server, OpenAI and Ollama serve.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::ModelError;

/// A vector and the model that made it. Vectors of different models are never compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Embedding {
    /// The embedding model's name, as its [`Embedder::model`] gives it.
    pub model: String,
    /// The vector.
    pub vector: Vec<f32>,
}

impl Embedding {
    /// Cosine similarity with `other`, or `None` when the two cannot be compared: different
    /// models or lengths, a zero vector, or a value that is not finite.
    pub fn cosine(&self, other: &Embedding) -> Option<f32> {
        if self.model != other.model {
            return None;
        }
        cosine(&self.vector, norm(&self.vector)?, &other.vector)
    }
}

/// The dot product of two vectors of one length, in eight independent sums so that the
/// compiler can keep them in SIMD registers (a single running sum must be added in order, which
/// keeps it scalar): hybrid search scans every vector of an actor.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (a8, a_rest) = a.as_chunks::<8>();
    let (b8, b_rest) = b.as_chunks::<8>();
    let mut sums = [0.0f32; 8];
    for (x, y) in a8.iter().zip(b8) {
        for i in 0..8 {
            sums[i] += x[i] * y[i];
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    sums.iter().sum::<f32>() + tail
}

/// The Euclidean length of `v`, when it is finite and not zero.
pub(crate) fn norm(v: &[f32]) -> Option<f32> {
    let n = dot(v, v).sqrt();
    (n.is_finite() && n > 0.0).then_some(n)
}

/// Cosine of `a` (of length `a_norm`) and `b`; `None` when they cannot be compared.
pub(crate) fn cosine(a: &[f32], a_norm: f32, b: &[f32]) -> Option<f32> {
    cosine_with_norms(a, a_norm, b, norm(b)?)
}

/// Cosine of `a` and `b` whose lengths are known; `None` when they cannot be compared.
pub(crate) fn cosine_with_norms(a: &[f32], a_norm: f32, b: &[f32], b_norm: f32) -> Option<f32> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    let c = dot(a, b) / (a_norm * b_norm);
    c.is_finite().then_some(c)
}

/// The longest vector accepted from a server.
#[cfg_attr(not(any(feature = "openai", feature = "bedrock")), allow(dead_code))]
pub(crate) const MAX_DIMENSIONS: usize = 65_536;

/// An answer that is not what the protocol promises.
#[cfg_attr(not(any(feature = "openai", feature = "bedrock")), allow(dead_code))]
pub(crate) fn invalid(message: String) -> ModelError {
    ModelError::InvalidReply { message }
}

/// `text` cut to at most `max_chars` characters (at a character boundary).
pub(crate) fn cut(text: &str, max_chars: usize) -> &str {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// An answer body that does not parse as `T`: an invalid reply quoting its start.
#[cfg_attr(not(any(feature = "openai", feature = "bedrock")), allow(dead_code))]
pub(crate) fn parse_answer<T: serde::de::DeserializeOwned>(
    what: &str,
    bytes: &[u8],
) -> Result<T, ModelError> {
    serde_json::from_slice(bytes).map_err(|e| {
        invalid(format!(
            "{what} ({e}): {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        ))
    })
}

/// `vectors` as embeddings of `model`, if every one is usable: not empty, at most
/// [`MAX_DIMENSIONS`] long, all of one length, finite and not zero.
#[cfg_attr(not(any(feature = "openai", feature = "bedrock")), allow(dead_code))]
pub(crate) fn checked(model: &str, vectors: Vec<Vec<f32>>) -> Result<Vec<Embedding>, ModelError> {
    let mut dimensions = None;
    let mut out = Vec::with_capacity(vectors.len());
    for (i, vector) in vectors.into_iter().enumerate() {
        if vector.is_empty() || vector.len() > MAX_DIMENSIONS {
            return Err(invalid(format!(
                "a vector of {} dimensions (1 to {MAX_DIMENSIONS} expected)",
                vector.len()
            )));
        }
        if *dimensions.get_or_insert(vector.len()) != vector.len() {
            return Err(invalid("vectors of different lengths in one answer".into()));
        }
        if norm(&vector).is_none() {
            return Err(invalid(format!(
                "the vector for text {i} is zero or not finite"
            )));
        }
        out.push(Embedding {
            model: model.to_owned(),
            vector,
        });
    }
    Ok(out)
}

/// A model that turns texts into vectors whose closeness follows closeness of meaning.
///
/// Implementations bound every call (a timeout, a response size) and check what the server
/// sent: one finite vector per text, all of one length.
#[async_trait]
pub trait Embedder: Send + Sync + 'static {
    /// The model's name, stored with every vector it makes.
    fn model(&self) -> &str;

    /// One vector per text, in order: for texts to be found (memories).
    async fn embed(&self, texts: &[&str]) -> Result<Vec<Embedding>, ModelError>;

    /// The vector of a search query. Models that embed queries and documents differently
    /// (Cohere's `search_query`) override it; by default it is [`Embedder::embed`]'s.
    async fn embed_query(&self, text: &str) -> Result<Embedding, ModelError> {
        let mut vectors = self.embed(&[text]).await?;
        match vectors.len() {
            1 => Ok(vectors.remove(0)),
            n => Err(invalid(format!("{n} vectors for one text"))),
        }
    }
}

/// A shared embedder is an embedder.
#[async_trait]
impl<E: Embedder + ?Sized> Embedder for Arc<E> {
    fn model(&self) -> &str {
        (**self).model()
    }

    async fn embed(&self, texts: &[&str]) -> Result<Vec<Embedding>, ModelError> {
        (**self).embed(texts).await
    }

    async fn embed_query(&self, text: &str) -> Result<Embedding, ModelError> {
        (**self).embed_query(text).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(model: &str, vector: &[f32]) -> Embedding {
        Embedding {
            model: model.into(),
            vector: vector.to_vec(),
        }
    }

    #[test]
    fn cosine_compares_only_what_can_be_compared() {
        let a = e("m", &[1.0, 0.0]);
        assert_eq!(a.cosine(&e("m", &[2.0, 0.0])), Some(1.0));
        assert_eq!(a.cosine(&e("m", &[0.0, 3.0])), Some(0.0));
        assert_eq!(a.cosine(&e("other", &[1.0, 0.0])), None);
        assert_eq!(a.cosine(&e("m", &[1.0, 0.0, 0.0])), None);
        assert_eq!(a.cosine(&e("m", &[0.0, 0.0])), None);
        assert_eq!(a.cosine(&e("m", &[f32::NAN, 1.0])), None);
        assert_eq!(a.cosine(&e("m", &[f32::INFINITY, 1.0])), None);
        assert_eq!(e("m", &[]).cosine(&e("m", &[])), None);
        // Values whose squares overflow f32 have no usable length.
        assert_eq!(a.cosine(&e("m", &[f32::MAX, f32::MAX])), None);
        // Lengths beyond one chunk of eight, with a remainder, sum as the plain product does.
        let long: Vec<f32> = (0..19).map(|i| i as f32 * 0.25 - 2.0).collect();
        let plain: f32 = long.iter().map(|x| x * x).sum();
        assert!((dot(&long, &long) - plain).abs() < 1e-3);
        let l = e("m", &long);
        assert!((l.cosine(&l).unwrap() - 1.0).abs() < 1e-6);
        // Cut at characters, not bytes.
        assert_eq!(cut("Zoë likes café", 3), "Zoë");
        assert_eq!(cut("short", 10), "short");
    }
}
