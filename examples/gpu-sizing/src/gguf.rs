//! The metadata of a GGUF file (llama.cpp's format): the architecture's sizes, read from the
//! header without loading the tensors. Every length and count the file states is bounded before
//! it is used: a hostile or truncated file gives a [`GgufError`], never a panic or a huge
//! allocation.

use std::collections::HashMap;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// Why a GGUF header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// Reading the file failed (a truncated file ends here too).
    #[error("reading the GGUF file: {0}")]
    Io(#[from] std::io::Error),
    /// Not a GGUF file.
    #[error("not a GGUF file (magic {0:?})")]
    NotGguf([u8; 4]),
    /// A GGUF version this reader does not know.
    #[error("GGUF version {0} is not supported (2 and 3 are)")]
    Version(u32),
    /// A stated size beyond what a model header holds.
    #[error("the header states {what} = {value}, beyond the limit of {limit}")]
    TooLarge {
        /// What was stated.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// A value type the format does not define.
    #[error("unknown metadata value type {0}")]
    ValueType(u32),
    /// A key the sizing needs is missing or has the wrong type.
    #[error("the metadata has no usable `{0}`")]
    Missing(String),
}

/// The sizes of a GGUF model that GPU memory depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufModel {
    /// `general.architecture` (`llama`, `qwen2`, ...).
    pub architecture: String,
    /// `general.name`, when present.
    pub name: Option<String>,
    /// Transformer blocks.
    pub layers: u64,
    /// Attention heads.
    pub heads: u64,
    /// Key/value heads (grouped-query attention).
    pub kv_heads: u64,
    /// Dimension of one head.
    pub head_dim: u64,
    /// The context length the model was trained for.
    pub context_length: Option<u64>,
    /// Bytes of tensor data: the weights as stored (quantised or not).
    pub weight_bytes: u64,
}

const MAX_STRING: u64 = 1 << 20;
const MAX_ARRAY: u64 = 1 << 24;
const MAX_KEYS: u64 = 1 << 16;
const MAX_TENSORS: u64 = 1 << 20;
const MAX_DIMS: u32 = 8;
/// Arrays nest at most this deep (the format uses one level; a deeper file is hostile, and
/// unbounded nesting would overflow the stack).
const MAX_NESTING: u32 = 4;

#[derive(Debug, Clone)]
enum Value {
    Uint(u64),
    Int(i64),
    Float,
    Bool,
    Str(String),
    Array,
}

struct Reader<R> {
    inner: R,
}

impl<R: Read> Reader<R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut b = [0u8; N];
        self.inner.read_exact(&mut b)?;
        Ok(b)
    }
    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn bounded(&mut self, what: &'static str, limit: u64) -> Result<u64, GgufError> {
        let value = self.u64()?;
        if value > limit {
            return Err(GgufError::TooLarge { what, value, limit });
        }
        Ok(value)
    }
    fn string(&mut self) -> Result<String, GgufError> {
        let len = self.bounded("a string's length", MAX_STRING)?;
        let mut buf = Vec::new();
        (&mut self.inner).take(len).read_to_end(&mut buf)?;
        if buf.len() as u64 != len {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
    fn skip(&mut self, n: u64) -> Result<(), GgufError> {
        let copied = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())?;
        if copied != n {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        Ok(())
    }
    fn value(&mut self, kind: u32, depth: u32) -> Result<Value, GgufError> {
        Ok(match kind {
            0 => Value::Uint(u64::from(self.bytes::<1>()?[0])),
            1 => Value::Int(i64::from(i8::from_le_bytes(self.bytes()?))),
            2 => Value::Uint(u64::from(u16::from_le_bytes(self.bytes()?))),
            3 => Value::Int(i64::from(i16::from_le_bytes(self.bytes()?))),
            4 => Value::Uint(u64::from(self.u32()?)),
            5 => Value::Int(i64::from(i32::from_le_bytes(self.bytes()?))),
            6 => {
                self.bytes::<4>()?;
                Value::Float
            }
            7 => {
                self.bytes::<1>()?;
                Value::Bool
            }
            8 => Value::Str(self.string()?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(GgufError::TooLarge {
                        what: "the nesting of arrays",
                        value: u64::from(depth) + 1,
                        limit: u64::from(MAX_NESTING),
                    });
                }
                let inner = self.u32()?;
                let count = self.bounded("an array's length", MAX_ARRAY)?;
                let width = match inner {
                    0 | 1 | 7 => Some(1),
                    2 | 3 => Some(2),
                    4..=6 => Some(4),
                    10..=12 => Some(8),
                    _ => None,
                };
                match width {
                    Some(w) => self.skip(count * w)?,
                    None => {
                        for _ in 0..count {
                            // Strings (the tokenizer's vocabulary) and nested arrays.
                            self.value(inner, depth + 1)?;
                        }
                    }
                }
                Value::Array
            }
            10 => Value::Uint(self.u64()?),
            11 => Value::Int(i64::from_le_bytes(self.bytes()?)),
            12 => {
                self.bytes::<8>()?;
                Value::Float
            }
            other => return Err(GgufError::ValueType(other)),
        })
    }
}

impl GgufModel {
    /// Reads the header of the GGUF file at `path`.
    pub fn read(path: &Path) -> Result<Self, GgufError> {
        let file = std::fs::File::open(path)?;
        let file_len = file.metadata()?.len();
        let mut r = Reader {
            inner: BufReader::new(file),
        };
        let magic = r.bytes::<4>()?;
        if &magic != b"GGUF" {
            return Err(GgufError::NotGguf(magic));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version(version));
        }
        let tensors = r.bounded("the tensor count", MAX_TENSORS)?;
        let keys = r.bounded("the metadata key count", MAX_KEYS)?;
        let mut meta = HashMap::new();
        for _ in 0..keys {
            let key = r.string()?;
            let kind = r.u32()?;
            let value = r.value(kind, 0)?;
            meta.insert(key, value);
        }
        for _ in 0..tensors {
            r.string()?;
            let dims = r.u32()?;
            if dims > MAX_DIMS {
                return Err(GgufError::TooLarge {
                    what: "a tensor's dimensions",
                    value: u64::from(dims),
                    limit: u64::from(MAX_DIMS),
                });
            }
            r.skip(u64::from(dims) * 8 + 4 + 8)?;
        }
        let alignment = match meta.get("general.alignment") {
            Some(Value::Uint(a)) if *a > 0 && *a <= 1 << 20 => *a,
            _ => 32,
        };
        let header_end = r.inner.stream_position()?;
        let data_start = header_end.div_ceil(alignment) * alignment;
        // Whatever the tensors' types, their data is the rest of the file.
        let weight_bytes = file_len.saturating_sub(data_start);
        r.inner.seek(SeekFrom::Start(0))?;

        let text = |key: &str| match meta.get(key) {
            Some(Value::Str(s)) => Some(s.clone()),
            _ => None,
        };
        let number = |key: &str| match meta.get(key) {
            Some(Value::Uint(n)) => Some(*n),
            Some(Value::Int(n)) => u64::try_from(*n).ok(),
            _ => None,
        };
        let architecture = text("general.architecture")
            .ok_or_else(|| GgufError::Missing("general.architecture".into()))?;
        let need = |suffix: &str| {
            let key = format!("{architecture}.{suffix}");
            number(&key)
                .filter(|n| *n > 0)
                .ok_or(GgufError::Missing(key))
        };
        let layers = need("block_count")?;
        let heads = need("attention.head_count")?;
        let kv_heads = need("attention.head_count_kv").unwrap_or(heads);
        let head_dim = match need("attention.key_length") {
            Ok(d) => d,
            Err(_) => need("embedding_length")? / heads,
        };
        Ok(Self {
            name: text("general.name"),
            context_length: need("context_length").ok(),
            architecture,
            layers,
            heads,
            kv_heads,
            head_dim,
            weight_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    fn header(keys: &[(&str, u32)], tensors: u64) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(tensors.to_le_bytes());
        out.extend((keys.len() as u64 + 1).to_le_bytes());
        string(&mut out, "general.architecture");
        out.extend(8u32.to_le_bytes());
        string(&mut out, "llama");
        for (k, v) in keys {
            string(&mut out, k);
            out.extend(4u32.to_le_bytes());
            out.extend(v.to_le_bytes());
        }
        out
    }

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        f
    }

    #[test]
    fn reads_sizes_and_counts_the_tensor_data() {
        let mut bytes = header(
            &[
                ("llama.block_count", 32),
                ("llama.attention.head_count", 32),
                ("llama.attention.head_count_kv", 8),
                ("llama.embedding_length", 4096),
            ],
            0,
        );
        let start = bytes.len().div_ceil(32) * 32;
        bytes.resize(start + 1000, 0);
        let model = GgufModel::read(write(&bytes).path()).unwrap();
        assert_eq!(
            (model.layers, model.heads, model.kv_heads, model.head_dim),
            (32, 32, 8, 128)
        );
        assert_eq!(model.weight_bytes, 1000);
    }

    #[test]
    fn hostile_headers_are_typed_errors() {
        assert!(matches!(
            GgufModel::read(write(b"GGML\x03\0\0\0").path()),
            Err(GgufError::NotGguf(_))
        ));
        // A string that claims u64::MAX bytes.
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        bytes.extend(u64::MAX.to_le_bytes());
        assert!(matches!(
            GgufModel::read(write(&bytes).path()),
            Err(GgufError::TooLarge { .. })
        ));
        // A truncated header.
        let full = header(&[("llama.block_count", 32)], 0);
        assert!(matches!(
            GgufModel::read(write(&full[..full.len() - 3]).path()),
            Err(GgufError::Io(_))
        ));
        // Arrays of arrays, nested a million deep: refused, not a stack overflow.
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        string(&mut bytes, "nested");
        bytes.extend(9u32.to_le_bytes());
        for _ in 0..1_000_000 {
            bytes.extend(9u32.to_le_bytes());
            bytes.extend(1u64.to_le_bytes());
        }
        assert!(matches!(
            GgufModel::read(write(&bytes).path()),
            Err(GgufError::TooLarge {
                what: "the nesting of arrays",
                ..
            })
        ));
        // Sizes missing.
        assert!(matches!(
            GgufModel::read(write(&header(&[("llama.block_count", 32)], 0)).path()),
            Err(GgufError::Missing(_))
        ));
    }
}
