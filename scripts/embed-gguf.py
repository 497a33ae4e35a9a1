#!/usr/bin/env python3
"""Write a sentence-transformers BERT model (safetensors + tokenizer.json) as a GGUF file that
llama.cpp's llama-server serves on /v1/embeddings.

    embed-gguf.py MODEL_DIR OUT.gguf

llama.cpp's own converter needs torch; this one needs only the `gguf` and `safetensors`
packages (numpy). It handles what all-MiniLM-L6-v2 is: a `BertModel` with a WordPiece
vocabulary and mean pooling. Anything else is refused with a message, not guessed at.
"""
import json
import sys
from pathlib import Path

import gguf
from safetensors.numpy import load_file


def fail(message):
    print(f"embed-gguf: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 3:
        fail("usage: embed-gguf.py MODEL_DIR OUT.gguf")
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    config = json.loads((src / "config.json").read_text())
    if config.get("architectures") != ["BertModel"]:
        fail(f"not a BertModel: {config.get('architectures')}")
    tokenizer = json.loads((src / "tokenizer.json").read_text())
    if tokenizer["model"]["type"] != "WordPiece":
        fail(f"not a WordPiece tokenizer: {tokenizer['model']['type']}")
    pooling = json.loads((src / "1_Pooling" / "config.json").read_text())
    if not pooling.get("pooling_mode_mean_tokens"):
        fail("only mean pooling is handled")

    layers = config["num_hidden_layers"]
    writer = gguf.GGUFWriter(str(out), "bert")
    writer.add_name(src.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(layers)
    writer.add_head_count(config["num_attention_heads"])
    writer.add_layer_norm_eps(config["layer_norm_eps"])
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    # llama.cpp's WordPiece tokenizer matches on "phantom space" pieces: a word start carries
    # U+2581, a continuation ("##ing") loses its marks; special tokens stay as they are.
    by_id = sorted(tokenizer["model"]["vocab"].items(), key=lambda item: item[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        fail("the vocabulary's ids are not 0..n")
    special = {t["id"] for t in tokenizer.get("added_tokens", []) if t.get("special")}
    tokens, types = [], []
    for piece, i in by_id:
        if i in special:
            tokens.append(piece)
            types.append(gguf.TokenType.CONTROL)
        else:
            tokens.append(piece[2:] if piece.startswith("##") else "\u2581" + piece)
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("bert")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_type_count(config.get("type_vocab_size", 2))
    ids = {t["content"]: t["id"] for t in tokenizer.get("added_tokens", [])}
    for name, add in (("[CLS]", writer.add_bos_token_id), ("[SEP]", writer.add_sep_token_id),
                      ("[UNK]", writer.add_unk_token_id), ("[PAD]", writer.add_pad_token_id),
                      ("[MASK]", writer.add_mask_token_id)):
        if name not in ids:
            fail(f"the tokenizer has no {name}")
        add(ids[name])

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, layers)
    for name, data in load_file(str(src / "model.safetensors")).items():
        if name == "embeddings.position_ids" or name.startswith("pooler."):
            continue
        mapped = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            fail(f"no GGUF name for tensor {name}")
        writer.add_tensor(mapped, data.astype("float32"))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main()
