// Verify keysvc tokens the way a node partner would: jose's createRemoteJWKSet on our JWKS URL.
// Input (stdin): {"jwks_url": "...", "issuer": "...", "audience": "...", "tokens": [{"token": "...", "alg": "..."}]}
// Output (stdout): {"verified": N, "failures": ["..."]}
import { createRemoteJWKSet, jwtVerify } from "jose";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const job = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const jwks = createRemoteJWKSet(new URL(job.jwks_url), { cacheMaxAge: 600000, cooldownDuration: 30000 });
let verified = 0;
const failures = [];
for (const { token, alg } of job.tokens) {
  try {
    const { payload, protectedHeader } = await jwtVerify(token, jwks, {
      issuer: job.issuer,
      audience: job.audience,
      algorithms: [alg],
      requiredClaims: ["exp", "iat", "nbf", "jti", "sub"],
    });
    if (protectedHeader.typ !== "JWT" || !protectedHeader.kid) throw new Error("bad header");
    if (payload.nbf !== payload.iat) throw new Error("nbf != iat");
    verified += 1;
  } catch (err) {
    failures.push(`${alg}: ${err.code || err.name}: ${err.message}`);
  }
}
process.stdout.write(JSON.stringify({ verified, failures }));
