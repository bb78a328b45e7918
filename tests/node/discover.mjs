// Verify keysvc tokens the way a verifier that starts from an issuer does (OpenID Connect Discovery 1.0):
// fetch `${issuer}/.well-known/openid-configuration`, check its issuer, then jose's createRemoteJWKSet on
// the jwks_uri it names, and jwtVerify with the issuer and the algorithms it names.
// Input (stdin): {"issuer": "...", "audience": "...", "tokens": ["..."]}
// Output (stdout): {"verified": N, "failures": ["..."], "jwks_uri": "..."}
import { createRemoteJWKSet, jwtVerify } from "jose";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const job = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const answer = await fetch(`${job.issuer.replace(/\/$/, "")}/.well-known/openid-configuration`);
if (answer.status !== 200) throw new Error(`discovery answered ${answer.status}`);
const config = await answer.json();
if (config.issuer !== job.issuer) throw new Error(`discovered issuer ${config.issuer} is not ${job.issuer}`);
const jwks = createRemoteJWKSet(new URL(config.jwks_uri));
let verified = 0;
const failures = [];
for (const token of job.tokens) {
  try {
    await jwtVerify(token, jwks, {
      issuer: config.issuer,
      audience: job.audience,
      algorithms: config.id_token_signing_alg_values_supported,
      requiredClaims: ["exp", "iat", "sub"],
    });
    verified += 1;
  } catch (err) {
    failures.push(`${err.code || err.name}: ${err.message}`);
  }
}
process.stdout.write(JSON.stringify({ verified, failures, jwks_uri: config.jwks_uri }));
