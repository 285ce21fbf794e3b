"""`inventory`, in Python: reserves and releases stock for a saga, built with componentize-py
against the `step-plugin` world of `wit/plugin.wit`.

Input (the saga context overlaid with earlier outputs and the step's parameters):
    sku            str, default "unknown"
    quantity       int, default 1
    stock          int, default 100     -- a quantity above it fails (not retried)
    lock_conflicts int, default 0       -- the first N attempts meet a lock held by another
                                           transaction and ask to be retried
    raise          str, optional        -- raise a Python exception with this message (for tests)

Each call builds a reservation record for its transaction; execute returns it, and
compensate releases the record the saga hands back as `step_output`.
"""

import json

from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import CallContext, Outcome, Outcome_Failure, Outcome_Retry, Outcome_Success


def _input(ctx: CallContext) -> dict:
    value = json.loads(ctx.input) if ctx.input else {}
    if not isinstance(value, dict):
        raise ValueError("input must be a JSON object")
    return value


def _reservation(ctx: CallContext, params: dict) -> dict:
    return {
        "reservation_id": ctx.idempotency_key,
        "transaction_id": ctx.transaction_id,
        "sku": str(params.get("sku", "unknown")),
        "quantity": int(params.get("quantity", 1)),
    }


class Step(exports.Step):
    def execute(self, ctx: CallContext) -> Outcome:
        params = _input(ctx)
        if "raise" in params:
            raise RuntimeError(str(params["raise"]))
        conflicts = int(params.get("lock_conflicts", 0))
        if ctx.attempt <= conflicts:
            host.log(host.LogLevel.WARN, f"stock row locked by another transaction (attempt {ctx.attempt})")
            return Outcome_Retry(f"lock conflict on attempt {ctx.attempt}")
        record = _reservation(ctx, params)
        stock = int(params.get("stock", 100))
        if record["quantity"] > stock:
            return Outcome_Failure(f"insufficient stock: {record['quantity']} requested, {stock} left")
        record["reserved_by"] = "python"
        host.log(host.LogLevel.INFO, f"reserved {record['quantity']} x {record['sku']}")
        return Outcome_Success(json.dumps(record))

    def compensate(self, ctx: CallContext) -> Outcome:
        params = _input(ctx)
        # The saga hands back what execute returned as `step_output`: release exactly that.
        record = params.get("step_output") or _reservation(ctx, params)
        released = {
            "released": record.get("reservation_id"),
            "transaction_id": ctx.transaction_id,
            "sku": record.get("sku"),
            "quantity": record.get("quantity"),
            "released_by": "python",
        }
        host.log(host.LogLevel.INFO, f"released reservation {released['released']}")
        return Outcome_Success(json.dumps(released))
