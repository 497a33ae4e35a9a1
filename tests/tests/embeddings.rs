//! Retrieval by meaning against a real embedding endpoint: llama.cpp's `llama-server
//! --embeddings` serving all-MiniLM-L6-v2 (`scripts/embed-model.sh`, found through
//! `AGENT_EMBED_URL`), and vectors kept by the DynamoDB memory store on the local server.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use agent_core::memory::{
    Embedder, EmbeddingMemoryStore, InMemoryMemoryStore, MemoryRecord, MemoryStore,
};
use agent_core::model::openai::OpenAiEmbedder;
use agent_memory::DynamoDbMemoryStore;

fn embedder() -> OpenAiEmbedder {
    let url = std::env::var("AGENT_EMBED_URL").unwrap_or_else(|_| {
        panic!(
            "AGENT_EMBED_URL is not set. These tests need the local embedding endpoint: run the whole suite with \
             scripts/test.sh, or `export AGENT_EMBED_URL=$(scripts/embed-model.sh start)`"
        )
    });
    OpenAiEmbedder::builder()
        .base_url(url)
        .model("all-minilm-l6-v2")
        .max_batch(16)
        .build()
        .expect("embedder")
}

const FACTS: &[&str] = &[
    "I'm vegetarian.",
    "I prefer window seats.",
    "I usually fly from Porto.",
    "My daughter is allergic to peanuts.",
    "I work as a nurse in Lisbon.",
    "I collect vintage postcards.",
];

#[tokio::test]
async fn the_real_endpoint_returns_one_unit_vector_per_text_in_order_across_batches() {
    let embedder = embedder();
    // 40 texts at 16 per request: three requests, one answer in input order.
    let texts: Vec<String> = (0..40)
        .map(|i| format!("{} (note {i})", FACTS[i % FACTS.len()]))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let all = embedder.embed(&refs).await.expect("embed");
    assert_eq!(all.len(), 40);
    for e in &all {
        assert_eq!(e.vector.len(), 384, "all-MiniLM-L6-v2 has 384 dimensions");
        assert_eq!(e.model, "all-minilm-l6-v2");
        let norm: f32 = e.vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "llama-server normalises: {norm}");
    }
    // Text 37 alone gets the vector it got in the third batch.
    let alone = embedder.embed(&[refs[37]]).await.expect("embed one");
    let same = alone[0].cosine(&all[37]).expect("comparable");
    assert!(same > 0.999, "{same}");
    // Paraphrases are closer than unrelated sentences.
    let v = embedder
        .embed(&[
            "I prefer window seats.",
            "I always want a seat by the window.",
            "My daughter is allergic to peanuts.",
        ])
        .await
        .expect("embed");
    let close = v[0].cosine(&v[1]).unwrap();
    let far = v[0].cosine(&v[2]).unwrap();
    assert!(close > 0.6 && far < 0.3, "close {close}, far {far}");
}

/// Queries that share no word with the fact they need; by words alone none is found.
const BY_MEANING: &[(&str, &str)] = &[
    ("Book me something to eat on my flight", "vegetarian"),
    ("Does anyone in my family have food allergies?", "peanuts"),
    ("What hobby do I have?", "postcards"),
];

async fn finds_by_meaning(store: &dyn MemoryStore, actor: &str) {
    for (query, needed) in BY_MEANING {
        let found = store.search(actor, None, query, 3).await.expect("search");
        let top: Vec<&str> = found.iter().map(|s| s.record.content.as_str()).collect();
        assert!(
            top.iter().any(|c| c.contains(needed)),
            "`{query}` should find the record about {needed} in its top 3: {top:?}"
        );
    }
}

#[tokio::test]
async fn memory_finds_facts_by_meaning_where_words_find_nothing() {
    let plain = InMemoryMemoryStore::new();
    let store = EmbeddingMemoryStore::new(plain.clone(), embedder());
    for fact in FACTS {
        store
            .put(&MemoryRecord::new("ana", "facts", *fact))
            .await
            .expect("put");
    }
    // Every record was stored with its vector.
    let kept = plain.list("ana", None).await.expect("list");
    assert!(kept.iter().all(|r| r.embedding.is_some()));
    for (query, _) in BY_MEANING {
        assert!(
            plain
                .search("ana", None, query, 3)
                .await
                .unwrap()
                .is_empty(),
            "`{query}` shares a word with a fact; the test needs queries that do not"
        );
    }
    finds_by_meaning(&store, "ana").await;
    // Another actor's memory stays out of reach.
    assert!(
        store
            .search("bo", None, BY_MEANING[0].0, 3)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn dynamodb_keeps_the_vectors_and_a_second_replica_searches_by_meaning() {
    let (ddb, table) = agent_tests::fresh_dynamodb_table("embeddings").await;
    // Vectors with values a lossy encoding would change (subnormal, extreme, negative zero):
    // written as given (their model is the embedder's, so the wrapper keeps them), then read
    // back by a replica that never saw the writes, and checked bit for bit.
    let writer =
        EmbeddingMemoryStore::new(DynamoDbMemoryStore::new(ddb.clone(), &table), embedder());
    let model = embedder().model().to_owned();
    let exact = vec![f32::MIN_POSITIVE / 2.0, f32::MAX, -0.0, 1.0e-30, -3.25, 0.1];
    let mut known = MemoryRecord::new("zed", "facts", "a record with a known vector");
    known.embedding = Some(agent_core::memory::Embedding {
        model: model.clone(),
        vector: exact.clone(),
    });
    writer.put(&known).await.expect("put");
    let replica = DynamoDbMemoryStore::new(ddb.clone(), &table);
    let read = replica.list("zed", None).await.expect("list");
    let got = read[0].embedding.as_ref().expect("a vector");
    assert_eq!(got.model, model);
    assert_eq!(
        got.vector.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        exact.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        "the vector survives the table bit for bit"
    );
    // The raw attribute is little-endian f32 bytes, as documented.
    let items = ddb
        .query()
        .table_name(&table)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(
            ":pk",
            aws_sdk_dynamodb::types::AttributeValue::S("actor#zed".into()),
        )
        .send()
        .await
        .expect("query");
    let raw = items
        .items()
        .iter()
        .find_map(|i| i.get("embedding")?.as_b().ok())
        .expect("an embedding attribute");
    let expected: Vec<u8> = exact.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(raw.as_ref(), expected.as_slice());

    // Real facts, embedded by the wrapper, found by meaning through a second replica.
    for fact in FACTS {
        writer
            .put(&MemoryRecord::new("ana", "facts", *fact))
            .await
            .expect("put");
    }
    let reader_store = DynamoDbMemoryStore::new(ddb, &table);
    let read = reader_store.list("ana", None).await.expect("list");
    assert_eq!(read.len(), FACTS.len());
    assert!(
        read.iter()
            .all(|r| r.embedding.as_ref().is_some_and(|e| e.vector.len() == 384))
    );
    let reader = EmbeddingMemoryStore::new(reader_store, embedder());
    finds_by_meaning(&reader, "ana").await;
}
