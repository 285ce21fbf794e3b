// `fraud-check`, in JavaScript: a two-phase-commit participant that vetoes large transfers,
// built with componentize-js against the `participant-plugin` world of `wit/plugin.wit`.
//
// Input (the transaction context overlaid with the participant's parameters):
//   amount           number, default 0
//   fraud_threshold  number, default 10000 -- prepare votes abort when amount is above it
//   throw            string, optional      -- throw an Error with this message (for tests)
import { log } from 'wasmtx:plugin/host@0.1.0';

function input(ctx) {
  const value = ctx.input ? JSON.parse(ctx.input) : {};
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new TypeError('input must be a JSON object');
  }
  return value;
}

function success(value) {
  return { tag: 'success', val: JSON.stringify(value) };
}

export const participant = {
  prepare(ctx) {
    const params = input(ctx);
    if (typeof params.throw === 'string') {
      throw new Error(params.throw);
    }
    const amount = Number(params.amount ?? 0);
    const threshold = Number(params.fraud_threshold ?? 10000);
    if (!Number.isFinite(amount) || !Number.isFinite(threshold)) {
      return { tag: 'abort', val: 'amount and fraud_threshold must be numbers' };
    }
    if (amount > threshold) {
      log('warn', `transfer of ${amount} is above the fraud threshold ${threshold}`);
      return { tag: 'abort', val: `amount ${amount} is above the fraud threshold ${threshold}` };
    }
    log('info', `transfer of ${amount} cleared (threshold ${threshold})`);
    return { tag: 'prepared' };
  },

  commit(ctx) {
    return success({ cleared: ctx.transactionId, checked_by: 'javascript' });
  },

  abort(ctx) {
    return success({ released: ctx.transactionId, checked_by: 'javascript' });
  },
};
