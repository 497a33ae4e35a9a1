//! Keyword ranking: tokens, BM25 over a list of records ([`rank`]), and the inverted index
//! stores keep per actor ([`MemoryIndex`]).

use std::collections::{HashMap, HashSet};

use super::{MemoryQuery, MemoryRecord, ScoredRecord};
use crate::model::embed::{cosine_with_norms, norm};

/// Lower-case alphanumeric words of two or more characters, stop words dropped, plurals folded
/// (`seats` -> `seat`).
pub fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 2)
        .map(str::to_lowercase)
        .filter(|w| !STOP_WORDS.contains(&w.as_str()))
        .map(|w| {
            if w.len() > 3 && w.ends_with('s') && !w.ends_with("ss") {
                w[..w.len() - 1].to_owned()
            } else {
                w
            }
        })
        .collect()
}

const STOP_WORDS: &[&str] = &[
    "the", "and", "for", "are", "was", "is", "to", "of", "in", "on", "at", "an", "or", "it", "be",
    "me", "my", "we", "you", "your", "with", "what", "which", "that", "this", "do", "does", "i",
    "a", "about", "like", "likes",
];

/// BM25 ranking of `records` for `query` (k1 = 1.2, b = 0.75); records without a query term are
/// dropped.
pub fn rank(records: Vec<MemoryRecord>, query: &str, limit: usize) -> Vec<ScoredRecord> {
    let terms: HashSet<String> = tokens(query).into_iter().collect();
    if terms.is_empty() || records.is_empty() {
        return Vec::new();
    }
    let docs: Vec<Vec<String>> = records.iter().map(|r| tokens(&r.content)).collect();
    let n = docs.len() as f64;
    let avg_len = docs.iter().map(Vec::len).sum::<usize>() as f64 / n;
    let mut df: HashMap<&str, f64> = HashMap::new();
    for doc in &docs {
        let unique: HashSet<&str> = doc.iter().map(String::as_str).collect();
        for t in unique {
            if terms.contains(t) {
                *df.entry(t).or_default() += 1.0;
            }
        }
    }
    let mut scored: Vec<ScoredRecord> = records
        .into_iter()
        .zip(&docs)
        .filter_map(|(record, doc)| {
            let len = doc.len() as f64;
            let mut score = 0.0;
            for term in &terms {
                let tf = doc.iter().filter(|t| *t == term).count() as f64;
                if tf == 0.0 {
                    continue;
                }
                let d = df.get(term.as_str()).copied().unwrap_or(0.0);
                let idf = ((n - d + 0.5) / (d + 0.5) + 1.0).ln();
                score += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len / avg_len.max(1.0)));
            }
            (score > 0.0).then_some(ScoredRecord { record, score })
        })
        .collect();
    scored.sort_by(|a, b| b.score.total_cmp(&a.score));
    scored.truncate(limit);
    scored
}

/// An inverted index over memory records (typically one actor's): the same BM25 ranking as
/// [`rank`], at a cost that grows with the records containing the query's words instead of with
/// every record. Stores keep one per actor to answer [`MemoryStore::search`](super::MemoryStore::search) without reading the
/// actor's whole memory again.
#[derive(Debug, Clone, Default)]
pub struct MemoryIndex {
    docs: Vec<Option<IndexedRecord>>,
    free: Vec<usize>,
    /// Slot of each (namespace, id).
    slots: HashMap<(String, String), usize>,
    /// Term -> slot -> occurrences.
    postings: HashMap<String, HashMap<usize, u32>>,
    /// Namespace -> (records, total tokens).
    namespaces: HashMap<String, (usize, usize)>,
}

#[derive(Debug, Clone)]
struct IndexedRecord {
    record: MemoryRecord,
    /// Tokens in the content, repeats counted.
    len: usize,
    /// Its distinct tokens, to remove its postings.
    terms: Vec<String>,
    /// The length of its vector, when it has a usable one.
    norm: Option<f32>,
}

/// Reciprocal rank fusion's constant: a record's fused score is the sum over the rankings that
/// hold it of `1 / (RRF_K + rank)`.
const RRF_K: f64 = 60.0;

impl MemoryIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// An index of `records`.
    pub fn from_records(records: impl IntoIterator<Item = MemoryRecord>) -> Self {
        let mut index = Self::new();
        for record in records {
            index.insert(record);
        }
        index
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Adds a record, replacing the one with the same namespace and id.
    pub fn insert(&mut self, record: MemoryRecord) {
        self.remove(&record.namespace, &record.id);
        let words = tokens(&record.content);
        let len = words.len();
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.docs.push(None);
                self.docs.len() - 1
            }
        };
        let mut counts: HashMap<String, u32> = HashMap::new();
        for w in words {
            *counts.entry(w).or_default() += 1;
        }
        let mut terms = Vec::with_capacity(counts.len());
        for (term, tf) in counts {
            self.postings
                .entry(term.clone())
                .or_default()
                .insert(slot, tf);
            terms.push(term);
        }
        let ns = self.namespaces.entry(record.namespace.clone()).or_default();
        ns.0 += 1;
        ns.1 += len;
        self.slots
            .insert((record.namespace.clone(), record.id.clone()), slot);
        let norm = record.embedding.as_ref().and_then(|e| norm(&e.vector));
        self.docs[slot] = Some(IndexedRecord {
            record,
            len,
            terms,
            norm,
        });
    }

    /// Removes a record; whether it was there.
    pub fn remove(&mut self, namespace: &str, id: &str) -> bool {
        let Some(slot) = self.slots.remove(&(namespace.to_owned(), id.to_owned())) else {
            return false;
        };
        let Some(doc) = self.docs.get_mut(slot).and_then(Option::take) else {
            return false;
        };
        for term in &doc.terms {
            if let Some(list) = self.postings.get_mut(term) {
                list.remove(&slot);
                if list.is_empty() {
                    self.postings.remove(term);
                }
            }
        }
        if let Some(ns) = self.namespaces.get_mut(namespace) {
            ns.0 = ns.0.saturating_sub(1);
            ns.1 = ns.1.saturating_sub(doc.len);
            if ns.0 == 0 {
                self.namespaces.remove(namespace);
            }
        }
        self.free.push(slot);
        true
    }

    /// The `limit` records most relevant to `query`, in one namespace or all: the ranking of
    /// [`rank`] over the same records.
    pub fn search(&self, namespace: Option<&str>, query: &str, limit: usize) -> Vec<ScoredRecord> {
        let terms: HashSet<String> = tokens(query).into_iter().collect();
        let (n, total_len) = match namespace {
            Some(ns) => self.namespaces.get(ns).copied().unwrap_or((0, 0)),
            None => self
                .namespaces
                .values()
                .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1)),
        };
        if terms.is_empty() || n == 0 || limit == 0 {
            return Vec::new();
        }
        let n = n as f64;
        let avg_len = (total_len as f64 / n).max(1.0);
        // Scores by slot in a dense vector: the records of common words can be most of the
        // index, and a map per search was the larger part of its cost.
        let mut scores = vec![0.0f64; self.docs.len()];
        let mut touched: Vec<usize> = Vec::new();
        for term in &terms {
            let Some(list) = self.postings.get(term) else {
                continue;
            };
            // The term's records in the namespace, read once: their count is the document
            // frequency, and they are the ones scored.
            let matching: Vec<(usize, f64, f64)> = list
                .iter()
                .filter_map(|(&slot, &tf)| {
                    let doc = self.docs.get(slot)?.as_ref()?;
                    namespace
                        .is_none_or(|ns| doc.record.namespace == ns)
                        .then_some((slot, f64::from(tf), doc.len as f64))
                })
                .collect();
            let df = matching.len() as f64;
            let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
            for (slot, tf, len) in matching {
                if scores[slot] == 0.0 {
                    touched.push(slot);
                }
                scores[slot] += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len / avg_len));
            }
        }
        let mut scored: Vec<(usize, f64)> = touched
            .into_iter()
            .map(|slot| (slot, scores[slot]))
            .filter(|(_, s)| *s > 0.0)
            .collect();
        let key = |slot: usize| {
            self.docs.get(slot).and_then(Option::as_ref).map(|d| {
                (
                    d.record.created_at,
                    d.record.id.as_str(),
                    d.record.namespace.as_str(),
                )
            })
        };
        // Highest score first; ties in `list` order, as `rank` does. Only the first `limit`
        // are sorted.
        let order = |a: &(usize, f64), b: &(usize, f64)| {
            b.1.total_cmp(&a.1).then_with(|| key(a.0).cmp(&key(b.0)))
        };
        if scored.len() > limit {
            scored.select_nth_unstable_by(limit, order);
            scored.truncate(limit);
        }
        scored.sort_by(order);
        scored
            .into_iter()
            .filter_map(|(slot, score)| {
                let doc = self.docs.get(slot)?.as_ref()?;
                Some(ScoredRecord {
                    record: doc.record.clone(),
                    score,
                })
            })
            .collect()
    }

    /// The `limit` records most relevant to `query`: the BM25 ranking of [`MemoryIndex::search`]
    /// alone when the query has no vector, and otherwise that ranking fused (reciprocal rank
    /// fusion) with the ranking by cosine similarity of the records whose vectors come from the
    /// query's model and reach its `min_similarity`. Scores are then fused scores.
    pub fn search_query(
        &self,
        namespace: Option<&str>,
        query: &MemoryQuery<'_>,
        limit: usize,
    ) -> Vec<ScoredRecord> {
        let Some(wanted) = query.embedding else {
            return self.search(namespace, query.text, limit);
        };
        if limit == 0 {
            return Vec::new();
        }
        let depth = limit.saturating_mul(4).max(20);
        let by_words = self.search(namespace, query.text, depth);
        let mut by_meaning: Vec<(usize, f32)> = match norm(&wanted.vector) {
            None => Vec::new(),
            Some(wanted_norm) => self
                .docs
                .iter()
                .enumerate()
                .filter_map(|(slot, doc)| {
                    let doc = doc.as_ref()?;
                    if namespace.is_some_and(|ns| doc.record.namespace != ns) {
                        return None;
                    }
                    let theirs = doc.record.embedding.as_ref()?;
                    if theirs.model != wanted.model {
                        return None;
                    }
                    let c =
                        cosine_with_norms(&wanted.vector, wanted_norm, &theirs.vector, doc.norm?)?;
                    (c >= query.min_similarity).then_some((slot, c))
                })
                .collect(),
        };
        let order = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if by_meaning.len() > depth {
            by_meaning.select_nth_unstable_by(depth, order);
            by_meaning.truncate(depth);
        }
        by_meaning.sort_by(order);
        if let Some(&(_, best)) = by_meaning.first() {
            by_meaning.retain(|(_, c)| *c >= best - query.similarity_margin);
        }
        let mut fused: HashMap<(&str, &str), (f64, &MemoryRecord)> = HashMap::new();
        for (rank, found) in by_words.iter().enumerate() {
            let r = &found.record;
            fused
                .entry((r.namespace.as_str(), r.id.as_str()))
                .or_insert((0.0, r))
                .0 += 1.0 / (RRF_K + rank as f64 + 1.0);
        }
        for (rank, (slot, _)) in by_meaning.iter().enumerate() {
            let Some(doc) = self.docs.get(*slot).and_then(Option::as_ref) else {
                continue;
            };
            let r = &doc.record;
            fused
                .entry((r.namespace.as_str(), r.id.as_str()))
                .or_insert((0.0, r))
                .0 += 1.0 / (RRF_K + rank as f64 + 1.0);
        }
        let mut out: Vec<ScoredRecord> = fused
            .into_values()
            .map(|(score, record)| ScoredRecord {
                record: record.clone(),
                score,
            })
            .collect();
        out.sort_by(|a, b| {
            b.score.total_cmp(&a.score).then_with(|| {
                (a.record.created_at, &a.record.id, &a.record.namespace).cmp(&(
                    b.record.created_at,
                    &b.record.id,
                    &b.record.namespace,
                ))
            })
        });
        out.truncate(limit);
        out
    }

    /// Every record, in `list` order.
    pub fn records(&self, namespace: Option<&str>) -> Vec<MemoryRecord> {
        let mut out: Vec<MemoryRecord> = self
            .docs
            .iter()
            .flatten()
            .filter(|d| namespace.is_none_or(|ns| d.record.namespace == ns))
            .map(|d| d.record.clone())
            .collect();
        sort_records(&mut out);
        out
    }
}

/// Word-set similarity of two texts (Jaccard), used to consolidate near-duplicates.
pub fn similarity(a: &str, b: &str) -> f64 {
    let a: HashSet<String> = tokens(a).into_iter().collect();
    let b: HashSet<String> = tokens(b).into_iter().collect();
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    a.intersection(&b).count() as f64 / a.union(&b).count() as f64
}

/// Orders records as `MemoryStore::list` returns them: oldest first, ties by id, then by
/// namespace.
pub fn sort_records(records: &mut [MemoryRecord]) {
    records.sort_by(|a, b| {
        (a.created_at, &a.id, &a.namespace).cmp(&(b.created_at, &b.id, &b.namespace))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_prefers_relevant_records() {
        let records = vec![
            MemoryRecord::new("a", "preferences", "Prefers window seats on long flights"),
            MemoryRecord::new("a", "facts", "Lives in Porto and works as a nurse"),
            MemoryRecord::new("a", "preferences", "Vegetarian, no seafood"),
        ];
        let ranked = rank(records, "Which seat do I like on flights?", 2);
        assert_eq!(ranked.len(), 1);
        assert!(ranked[0].record.content.contains("window seats"));
        assert!(rank(vec![MemoryRecord::new("a", "f", "x y")], "the", 3).is_empty());
        assert!(similarity("Prefers window seats", "prefers a window seat") > 0.3);
        assert!(similarity("Lives in Porto", "Vegetarian") < 0.1);
    }

    const WORDS: &[&str] = &[
        "lisbon", "porto", "window", "seat", "aisle", "vegan", "nurse", "flight",
    ];

    fn text(words: &[usize]) -> String {
        words
            .iter()
            .map(|&w| WORDS[w % WORDS.len()])
            .collect::<Vec<_>>()
            .join(" ")
    }

    proptest::proptest! {
        /// After any inserts, replacements and removals, the index ranks exactly as `rank` does
        /// over the same records: the same scores in the same order, per namespace and overall.
        #[test]
        fn index_ranks_as_rank_does(
            ops in proptest::collection::vec(
                (0u8..4, 0u8..2, proptest::collection::vec(0usize..8, 0..6)),
                0..40,
            ),
            query in proptest::collection::vec(0usize..8, 1..4),
            limit in 1usize..12,
        ) {
            let mut index = MemoryIndex::new();
            let mut records: HashMap<(String, String), MemoryRecord> = HashMap::new();
            for (i, (id, ns, words)) in ops.into_iter().enumerate() {
                let (id, ns) = (format!("r{id}"), ["facts", "preferences"][usize::from(ns)].to_owned());
                if words.is_empty() {
                    let removed = index.remove(&ns, &id);
                    proptest::prop_assert_eq!(removed, records.remove(&(ns, id)).is_some());
                } else {
                    let record = MemoryRecord {
                        id: id.clone(),
                        actor_id: "a".into(),
                        namespace: ns.clone(),
                        content: text(&words),
                        created_at: i as u64 % 3,
                        updated_at: 0,
                        source: None,
                        embedding: None,
                    };
                    index.insert(record.clone());
                    records.insert((ns, id), record);
                }
            }
            proptest::prop_assert_eq!(index.len(), records.len());
            let query = text(&query);
            for ns in [None, Some("facts"), Some("preferences")] {
                let mut subset: Vec<MemoryRecord> = records
                    .values()
                    .filter(|r| ns.is_none_or(|n| r.namespace == n))
                    .cloned()
                    .collect();
                sort_records(&mut subset);
                proptest::prop_assert_eq!(&index.records(ns), &subset);
                let subset_for_ties = subset.clone();
                let expected = rank(subset, &query, limit);
                let got = index.search(ns, &query, limit);
                proptest::prop_assert_eq!(got.len(), expected.len());
                for (g, e) in got.iter().zip(&expected) {
                    proptest::prop_assert!((g.score - e.score).abs() < 1e-9, "{} vs {}", g.score, e.score);
                    // A different record at a position is only a tie broken by rounding: `rank`
                    // gives it the same score.
                    if g.record != e.record {
                        let theirs = rank(subset_for_ties.clone(), &query, usize::MAX);
                        let tied = theirs
                            .iter()
                            .any(|t| t.record == g.record && (t.score - g.score).abs() < 1e-9);
                        proptest::prop_assert!(tied, "{:?} is not tied with {:?}", g.record, e.record);
                    }
                }
            }
        }
    }

    fn with_vector(id: &str, content: &str, model: &str, vector: &[f32]) -> MemoryRecord {
        let mut r = MemoryRecord::new("a", "facts", content);
        r.id = id.into();
        r.embedding = Some(crate::model::Embedding {
            model: model.into(),
            vector: vector.to_vec(),
        });
        r
    }

    #[test]
    fn hybrid_search_finds_by_meaning_and_ranks_agreement_first() {
        let index = MemoryIndex::from_records([
            // Shares no word with the query, close in meaning.
            with_vector("veg", "I'm vegetarian", "m", &[0.9, 0.1, 0.0]),
            // Shares a word and is close: found both ways.
            with_vector(
                "meal",
                "Window seat and a vegetarian meal on flights",
                "m",
                &[0.8, 0.3, 0.0],
            ),
            // Shares a word, far in meaning.
            with_vector("porto", "I take the Porto flight", "m", &[0.0, 0.2, 1.0]),
            // Close, but another model's vector: never compared.
            with_vector("other", "I like trains", "other", &[0.9, 0.1, 0.0]),
            // No vector: found by words only.
            MemoryRecord::new("a", "facts", "Something about a flight"),
            // Above the threshold, but far below the closest: not meant (the margin).
            with_vector("rail", "I like rail journeys", "m", &[0.7, 0.7, 0.0]),
        ]);
        let query = crate::model::Embedding {
            model: "m".into(),
            vector: vec![1.0, 0.0, 0.0],
        };
        let text = "something to eat on my flight";
        let words_only = index.search(None, text, 10);
        assert!(words_only.iter().all(|s| s.record.id != "veg"));

        let q = MemoryQuery::new(text).embedding(&query);
        let hybrid = index.search_query(None, &q, 10);
        let ids: Vec<&str> = hybrid.iter().map(|s| s.record.id.as_str()).collect();
        assert_eq!(ids[0], "meal", "found by words and by meaning: {ids:?}");
        assert!(ids.contains(&"veg"), "found by meaning alone: {ids:?}");
        assert!(ids.contains(&"porto"), "found by words alone: {ids:?}");
        assert!(!ids.contains(&"other"), "another model's vector: {ids:?}");
        assert!(hybrid.windows(2).all(|w| w[0].score >= w[1].score));

        assert!(!ids.contains(&"rail"), "outside the margin: {ids:?}");
        let wide = index.search_query(None, &q.similarity_margin(f32::INFINITY), 10);
        assert!(wide.iter().any(|s| s.record.id == "rail"));
        // The threshold keeps distant vectors out; the limit holds.
        let strict = index.search_query(None, &q.min_similarity(0.999), 10);
        assert!(strict.iter().all(|s| s.record.id != "veg"));
        assert_eq!(index.search_query(None, &q, 1).len(), 1);
        assert!(index.search_query(None, &q, 0).is_empty());
        // A namespace that holds none of them.
        assert!(index.search_query(Some("preferences"), &q, 5).is_empty());
        // A query vector of another length or a zero vector matches nothing by meaning.
        let bad = crate::model::Embedding {
            model: "m".into(),
            vector: vec![0.0, 0.0, 0.0],
        };
        let by_words = index.search_query(None, &MemoryQuery::new(text).embedding(&bad), 10);
        assert!(by_words.iter().all(|s| s.record.id != "veg"));
    }
}
