#!/usr/bin/python3
"""Writes the broken binary and text inputs of this corpus (safetensors files, checkpoint
folders, token shards, tokenizers, JSONL files). Their expected errors live beside them in
NAME.expect files, written by hand or with WEIR_UPDATE_BAD_INPUTS=1 and then read and checked.
Run it again after changing it; the output is deterministic:  tests/bad_inputs/make_inputs.py
"""
import json
import os
import shutil
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def write(rel, data):
    path = os.path.join(HERE, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def safetensors(header, data=b"", length=None):
    text = header if isinstance(header, str) else json.dumps(header)
    raw = text.encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def f32(name, shape, offsets):
    return {name: {"dtype": "F32", "shape": shape, "data_offsets": offsets}}


# --- safetensors files ---------------------------------------------------------------------------
st = "safetensors/"
write(st + "shorter_than_its_length.safetensors", b"\x10\x00\x00")
write(st + "header_length_past_the_file.safetensors", safetensors("{}", length=1 << 40))
write(st + "header_not_json.safetensors", safetensors("{\"w\": {\"dtype\": "))
write(st + "header_not_an_object.safetensors", safetensors("[1, 2, 3]"))
write(st + "unknown_dtype.safetensors",
      safetensors({"w": {"dtype": "F13", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)))
write(st + "data_past_the_end.safetensors", safetensors(f32("w", [1024], [0, 4096]), bytes(16)))
write(st + "size_differs_from_shape.safetensors", safetensors(f32("w", [2, 3], [0, 8]), bytes(8)))
write(st + "dimension_too_large.safetensors", safetensors(f32("w", [1 << 62], [0, 16]), bytes(16)))
write(st + "element_count_overflows.safetensors",
      safetensors(f32("w", [10**15, 10**15, 10**15], [0, 16]), bytes(16)))
write(st + "offsets_reversed.safetensors", safetensors(f32("w", [2], [8, 0]), bytes(8)))
write(st + "negative_dimension.safetensors", safetensors(f32("w", [-1], [0, 4]), bytes(4)))
write(st + "missing_offsets.safetensors",
      safetensors({"w": {"dtype": "F32", "shape": [1]}}, bytes(4)))

# --- training checkpoints (folders) --------------------------------------------------------------
model = safetensors(f32("embed.weight", [2], [0, 8]), struct.pack("<2f", 0.5, -0.5))
state = json.dumps({"step": 2, "data_position": 4, "optimizer": "optim.AdamW", "lr": 0.01})


def checkpoint(name, files, manifest="auto"):
    folder = os.path.join(HERE, "checkpoints", name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    for f, data in files.items():
        write(os.path.join("checkpoints", name, f), data)
    if manifest == "auto":
        sums = {f: {"bytes": len(d if isinstance(d, bytes) else d.encode()),
                    "crc32": "%08x" % zlib.crc32(d if isinstance(d, bytes) else d.encode())}
                for f, d in files.items()}
        manifest = json.dumps({"algorithm": "crc32", "files": sums}, indent=1)
    if manifest is not None:
        write(os.path.join("checkpoints", name, "checksums.json"), manifest)
    return folder


ok_files = {"model.safetensors": model, "optimizer.safetensors": safetensors("{}"),
            "trainer_state.json": state}
checkpoint("no_checksums", ok_files, manifest=None)
checkpoint("manifest_not_json", ok_files, manifest="{\"files\": ")
checkpoint("manifest_without_files", ok_files, manifest="{\"algorithm\": \"crc32\"}")
folder = checkpoint("flipped_bit", ok_files)
damaged = bytearray(model)
damaged[-3] ^= 0x10  # one bit of the data, after the manifest was written
write("checkpoints/flipped_bit/model.safetensors", bytes(damaged))
checkpoint("truncated_file", ok_files)
write("checkpoints/truncated_file/model.safetensors", model[:-4])
checkpoint("file_missing", ok_files)
os.remove(os.path.join(HERE, "checkpoints/file_missing/optimizer.safetensors"))
checkpoint("name_outside_the_folder", ok_files,
           manifest=json.dumps({"files": {"../trainer_state.json": {"bytes": 1, "crc32": "0"}}}))
checkpoint("state_without_step", dict(ok_files, **{"trainer_state.json": "{\"data_position\": 4}"}))

# --- token shards --------------------------------------------------------------------------------


def shard(magic=b"WEIRTOKS", version=1, token_bytes=2, record_tokens=4, records=2, eos=0,
          vocab=256, body=None):
    header = magic + struct.pack("<IIQQQQ", version, token_bytes, record_tokens, records, eos,
                                 vocab)
    header += bytes(64 - len(header))
    if body is None:
        body = bytes(record_tokens * records * token_bytes)
    return header + body


write("shards/wrong_magic.tok", shard(magic=b"NOTTOKS!"))
write("shards/newer_version.tok", shard(version=9))
write("shards/three_byte_tokens.tok", shard(token_bytes=3))
write("shards/fewer_records_than_header.tok", shard(records=1000, body=bytes(16)))
write("shards/shorter_than_header.tok", b"WEIRTOKS\x01\x00")
write("shards/records_overflow.tok", shard(record_tokens=1 << 30, records=1 << 62, body=b""))
write("shards/record_past_int64.tok", shard(record_tokens=1 << 63, records=0, body=b""))

# --- tokenizers ----------------------------------------------------------------------------------
write("tokenizers/truncated.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {")
write("tokenizers/no_model.json", json.dumps({"version": "1.0", "added_tokens": []}))
write("tokenizers/not_bpe.json", json.dumps({"model": {"type": "WordPiece", "vocab": {"a": 0}}}))


def byte_level(b):
    """GPT-2's printable spelling of byte b in tokenizer.json vocabularies."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    if b in printable:
        return chr(b)
    return chr(256 + [x for x in range(256) if x not in printable].index(b))


byte_vocab = {byte_level(b): b for b in range(256)}
write("tokenizers/merge_of_unknown_tokens.json", json.dumps(
    {"model": {"type": "BPE", "vocab": dict(byte_vocab, ab=256), "merges": ["a b", "ab zz"]}}))
write("tokenizers/merge_without_space.json", json.dumps(
    {"model": {"type": "BPE", "vocab": dict(byte_vocab, ab=256), "merges": ["ab"]}}))
write("tokenizers/duplicate_id.json", json.dumps(
    {"model": {"type": "BPE", "vocab": dict(byte_vocab, ab=5), "merges": []}}))
write("tokenizers/bad_base64.tiktoken", "!!!! 0\n")
write("tokenizers/rank_not_a_number.tiktoken", "YQ== zero\n")
write("tokenizers/missing_rank.tiktoken", "YQ==\n")

# --- JSONL sources -------------------------------------------------------------------------------
write("jsonl/array_line.jsonl", "{\"text\": \"a\"}\n[1, 2]\n")
write("jsonl/torn_last_line.jsonl", "{\"text\": \"a\"}\n{\"text\": \"b\n")
write("jsonl/not_json.jsonl", "{\"text\": \"a\"}\n{\"text\": \"b\"}\nhello\n")
write("jsonl/binary_garbage.jsonl", b"\x00\xff\xfe{\x01")
