"""The HTTP JSON API over a Recommender (FastAPI; run it with uvicorn, see jaxrec.serve).

    GET  /health               status, model, precision, catalogue and user counts, retrieval (the
                               loaded index with its recall measured at export, or exact)
    POST /recommend            {"user_id": "196", "k": 10}, {"history": ["50", "181"], "k": 10} or
                               {"features": {"age": 31, "occupation": "writer"}, "k": 10} (new users, as
                               the bundle's encoder allows), optional "exclude_seen" (default true)
                               -> items with scores and titles
    GET  /items/{item_id}      an item's metadata

Requests are batched dynamically: the first request of a batch waits at most `max_wait_ms`
for others (up to `max_batch`), then the batch runs as one jitted retrieval in a worker thread
while the event loop keeps accepting requests; those that arrive meanwhile form the next
batch, so under load batches fill without any waiting. Input is checked before it reaches the batch:
unknown users and items are 404, out-of-range k and invalid fields 422, malformed JSON 400,
each with a one-line `detail`.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

from jaxrec.serving.bundle import Bundle
from jaxrec.serving.recommender import MAX_K, Query, Recommendation, Recommender, RequestError

MAX_HISTORY = 1000  # items a cold-start request may send

Token = StrictStr | StrictInt  # original ids may be sent as strings or integers


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Token | None = Field(None, description="original id of a user known at export")
    history: list[Token] | None = Field(
        None, min_length=1, max_length=MAX_HISTORY, description="original ids of a new user's recent items"
    )
    features: dict[StrictStr, StrictStr | StrictInt | float] | None = Field(
        None, description='a new user\'s side features by source column, e.g. {"age": 31, "gender": "F"}'
    )
    k: StrictInt = Field(10, ge=1, le=MAX_K, description="number of items to return")
    exclude_seen: StrictBool = Field(True, description="leave out the user's known (or history) items")

    @model_validator(mode="after")
    def _one_query(self):
        if sum(x is not None for x in (self.user_id, self.history, self.features)) != 1:
            raise ValueError("send exactly one of 'user_id', 'history' and 'features'")
        return self


class Batcher:
    """Collects queries for up to max_wait_s (or max_batch of them) and answers them in one call."""

    def __init__(self, recommender: Recommender, max_batch: int, max_wait_s: float):
        self.recommender, self.max_batch, self.max_wait_s = recommender, max_batch, max_wait_s
        self.queue: asyncio.Queue = asyncio.Queue()
        self.batches = self.requests = self.largest = 0  # reported by /health

    async def submit(self, query: Query) -> Recommendation:
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((query, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
            self.batches, self.requests = self.batches + 1, self.requests + len(batch)
            self.largest = max(self.largest, len(batch))
            try:
                results = await asyncio.to_thread(self.recommender.recommend, [query for query, _ in batch])
            except Exception as err:  # a failed batch fails its requests, never the server
                results = [err] * len(batch)
            for (_, future), result in zip(batch, results):
                if future.done():  # the client went away
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)


def make_app(source: Bundle | Recommender, *, max_batch: int = 32, max_wait_ms: float = 1.0) -> FastAPI:
    """The FastAPI app over a bundle (its index if it has one, else exact top-K on one device) or
    a configured Recommender.
    Every batch bucket is compiled at startup, before the first request."""
    recommender = source if isinstance(source, Recommender) else Recommender(source)
    bundle, meta = recommender.bundle, recommender.bundle.item_meta

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(recommender.warmup, max_batch)
        app.state.batcher = Batcher(recommender, max_batch, max_wait_ms / 1e3)
        task = asyncio.create_task(app.state.batcher.run())
        yield
        task.cancel()

    app = FastAPI(title="jaxrec recommendations", lifespan=lifespan)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, err: RequestError):
        return JSONResponse(status_code=err.status, content={"detail": str(err)})

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError):
        errors = err.errors()
        if any(e["type"] == "json_invalid" for e in errors):
            return JSONResponse(status_code=400, content={"detail": f"malformed JSON body: {errors[0]['msg']}"})
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors)
        return JSONResponse(status_code=422, content={"detail": detail})

    def item_json(item: int, score: float | None = None) -> dict:
        out = {"item_id": bundle.item_tokens[item]}
        if score is not None:
            out["score"] = float(score)
        if meta is not None and meta[item]:
            out |= meta[item]
        return out

    @app.get("/health")
    async def health(request: Request):
        m, batcher = bundle.manifest, request.app.state.batcher
        return {
            "status": "ok",
            "model": m.get("model"),
            "dataset": m.get("dataset", {}).get("name"),
            "precision": m["precision"],
            "num_items": bundle.num_items,
            "num_users": bundle.num_users,
            "cold_start": recommender.cold_start_inputs(),
            "max_k": recommender.max_k,
            "retrieval": recommender.retrieval_info(),
            "batches": batcher.batches,
            "batched_requests": batcher.requests,
            "largest_batch": batcher.largest,
        }

    @app.post("/recommend")
    async def recommend(body: RecommendRequest, request: Request):
        if body.user_id is not None:
            query = recommender.user_query(body.user_id, body.k, body.exclude_seen)
            asked = {"user_id": str(body.user_id)}
        elif body.history is not None:
            query = recommender.history_query(body.history, body.k, body.exclude_seen)
            asked = {"history": [str(token) for token in body.history]}
        else:
            query = recommender.features_query(body.features, body.k)
            asked = {"features": body.features}
        result = await request.app.state.batcher.submit(query)
        return asked | {"k": body.k, "items": [item_json(i, s) for i, s in zip(result.ids.tolist(), result.scores)]}

    @app.get("/items/{item_id}")
    async def item(item_id: str):
        return item_json(recommender.item_id(item_id))

    return app
