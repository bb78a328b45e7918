// keysvc connect.js: open Zapier's Connect UI in a popup and wait for its answer.
// A dependency-free ES module for the partner's front end. No build step: serve it as a static file or
// copy it into your bundle.
//
//   import { openConnect } from "./connect.js";
//   button.addEventListener("click", async () => {
//     const { connect_url, state, expires_in } = await fetchConnectFromYourBackend();
//     const { authenticationId } = await openConnect({ connectUrl: connect_url, state, timeoutMs: expires_in * 1000 });
//     await sendToYourBackend({ state, authentication_id: authenticationId });   // -> /v1/zapier/connect/complete
//   });
//
// Messages accepted: only those whose origin is the Connect origin AND whose source is the popup this call
// opened. Everything else (other windows, other origins, messages this module does not understand) is
// ignored, so a page cannot forge a connection id by posting to the opener.
//
// The message shapes. Zapier documents the popup's postMessage as
//   {type: "authenticationSuccess", authId: <number>}   and   {type: "authenticationError", error: ...}
// and does not publish the type of `error`. This module also accepts, as plausible variants:
//   - the event name under `event` instead of `type`;
//   - the message as a JSON string instead of an object;
//   - `authId` as a string of digits;
//   - `error` as a string code, or an object carrying `error` or `code` (and `error_description`,
//     `description` or `message`); `error_description` / `errorDescription` beside it.
// A success message without a valid id is ignored rather than trusted. An error code that is not a short
// printable token is reported as "server_error" (Zapier's code for an unexpected error).
//
// Outcomes. The promise resolves with {authenticationId: "<id as a string>", state} and rejects with a
// ConnectError whose `code` is one of
//   authentication_error  the Connect UI reported an error: `error` (the partner's code) and
//                         `errorDescription` are set;
//   popup_closed          the user closed the popup without finishing;
//   popup_blocked         the browser refused to open it (call openConnect from a click handler);
//   timeout               no answer within timeoutMs.
// Every ConnectError carries `state`, so the front end can still report the outcome to its backend.
// Once settled, the listener and every timer are removed, and the popup is closed if it is still open.
// Bad arguments reject with a TypeError. No message names the Connect URL: it carries a single-use token.

/** Default wait for the user: the longest a keysvc `state` stays valid. */
export const DEFAULT_TIMEOUT_MS = 10 * 60 * 1000;

// How often the popup's `closed` flag is read. Nothing else tells the opener that the user closed it.
const CLOSED_POLL_MS = 250;
// After the popup is seen closed, how long a message it posted just before closing may still take to arrive.
const CLOSED_GRACE_MS = 500;
// setTimeout's largest delay; anything longer fires at once.
const MAX_TIMEOUT_MS = 2 ** 31 - 1;
const POPUP_FEATURES = "popup,width=980,height=700";
const ERROR_CODE = /^[\x21-\x7e]{1,128}$/;
const ERROR_DESCRIPTION_MAX = 1000;

/** The error every failed Connect flow rejects with; `code` says which outcome it was. */
export class ConnectError extends Error {
  constructor(code, message, { state, error, errorDescription } = {}) {
    super(message);
    this.name = "ConnectError";
    this.code = code;
    this.state = state;
    if (error !== undefined) {
      this.error = error;
      this.errorDescription = errorDescription;
    }
  }
}

/**
 * Open the Connect popup for `connectUrl` and settle when the flow ends.
 * Call it straight from a user gesture (a click handler): browsers block popups opened later.
 * @param {{connectUrl: string, state: string, connectOrigin?: string, timeoutMs?: number}} options
 * @returns {Promise<{authenticationId: string, state: string}>}
 */
export function openConnect({ connectUrl, state, connectOrigin, timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
  let origin;
  try {
    origin = checkedOrigin(connectUrl, connectOrigin);
    checkState(state);
    checkTimeout(timeoutMs);
  } catch (error) {
    return Promise.reject(error);
  }
  return new Promise((resolve, reject) => {
    let popup = null;
    try {
      popup = window.open(connectUrl, "_blank", POPUP_FEATURES);
    } catch {
      popup = null;
    }
    if (!popup) {
      reject(new ConnectError("popup_blocked", "the browser blocked the Connect popup", { state }));
      return;
    }

    let settled = false;
    let graceTimer = null;
    const deadline = window.setTimeout(() => {
      finish(() => reject(new ConnectError("timeout", `no answer from Connect within ${timeoutMs} ms`, { state })));
    }, timeoutMs);
    const closedPoll = window.setInterval(() => {
      if (popup.closed && graceTimer === null) {
        graceTimer = window.setTimeout(() => {
          finish(() => reject(new ConnectError("popup_closed", "the Connect popup was closed", { state })));
        }, CLOSED_GRACE_MS);
      }
    }, CLOSED_POLL_MS);

    function onMessage(event) {
      if (event.origin !== origin || event.source !== popup) {
        return;
      }
      const outcome = readMessage(event.data);
      if (outcome === null) {
        return;
      }
      if (outcome.ok) {
        finish(() => resolve({ authenticationId: outcome.authenticationId, state }));
      } else {
        const error = new ConnectError("authentication_error", `Connect reported an error: ${outcome.error}`, {
          state,
          error: outcome.error,
          errorDescription: outcome.errorDescription,
        });
        finish(() => reject(error));
      }
    }

    function finish(settle) {
      if (settled) {
        return;
      }
      settled = true;
      window.removeEventListener("message", onMessage);
      window.clearTimeout(deadline);
      window.clearInterval(closedPoll);
      if (graceTimer !== null) {
        window.clearTimeout(graceTimer);
      }
      if (!popup.closed) {
        popup.close();
      }
      settle();
    }

    window.addEventListener("message", onMessage);
  });
}

/**
 * What a message from the popup means: {ok: true, authenticationId}, {ok: false, error, errorDescription},
 * or null for a message that is not a Connect outcome (or a success without a usable id).
 */
export function readMessage(data) {
  const message = typeof data === "string" ? parseJson(data) : data;
  if (message === null || typeof message !== "object") {
    return null;
  }
  const name = typeof message.type === "string" ? message.type : message.event;
  if (name === "authenticationSuccess") {
    const authenticationId = idString(message.authId);
    return authenticationId === null ? null : { ok: true, authenticationId };
  }
  if (name === "authenticationError") {
    return { ok: false, ...partnerError(message) };
  }
  return null;
}

function partnerError(message) {
  const detail = message.error;
  let code = detail;
  let description = message.error_description ?? message.errorDescription;
  if (detail !== null && typeof detail === "object") {
    code = detail.error ?? detail.code;
    description = detail.error_description ?? detail.description ?? detail.message ?? description;
  }
  const outcome = { error: typeof code === "string" && ERROR_CODE.test(code) ? code : "server_error" };
  if (typeof description === "string") {
    outcome.errorDescription = cleanText(description);
  }
  return outcome;
}

function idString(value) {
  if (typeof value === "number" && Number.isSafeInteger(value) && value >= 0) {
    return String(value);
  }
  if (typeof value === "string" && /^[0-9]{1,20}$/.test(value)) {
    return value;
  }
  return null;
}

function cleanText(text) {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\x00-\x1f\x7f]+/g, " ").trim().slice(0, ERROR_DESCRIPTION_MAX);
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function checkedOrigin(connectUrl, connectOrigin) {
  if (typeof connectUrl !== "string") {
    throw new TypeError("openConnect: connectUrl must be the connect_url string");
  }
  let url;
  try {
    url = new URL(connectUrl);
  } catch {
    throw new TypeError("openConnect: connectUrl is not an absolute URL");
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    throw new TypeError("openConnect: connectUrl must be an http(s) URL");
  }
  if (connectOrigin === undefined) {
    return url.origin;
  }
  if (typeof connectOrigin !== "string" || !isOrigin(connectOrigin)) {
    throw new TypeError("openConnect: connectOrigin must be an origin such as https://connect.zapier.com");
  }
  return connectOrigin;
}

function isOrigin(text) {
  try {
    const url = new URL(text);
    return (url.protocol === "https:" || url.protocol === "http:") && url.origin === text;
  } catch {
    return false;
  }
}

function checkState(state) {
  if (typeof state !== "string" || state === "") {
    throw new TypeError("openConnect: state must be the non-empty state string from /v1/zapier/connect");
  }
}

function checkTimeout(timeoutMs) {
  if (typeof timeoutMs !== "number" || !Number.isFinite(timeoutMs) || timeoutMs <= 0 || timeoutMs > MAX_TIMEOUT_MS) {
    throw new TypeError(`openConnect: timeoutMs must be a number of milliseconds in (0, ${MAX_TIMEOUT_MS}]`);
  }
}
