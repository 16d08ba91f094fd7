// The least a warm attestation-agent layer costs in Node (issue #11's reference for the main path): read the cached
// token file, one node:http GET of the resource with it, ECDH-ES+A256KW and A256GCM to open the JWE, exit. No
// config, no checks, no layer: what any Node program doing this work pays, run by the bench next to the decoder.
// Usage: node warm-aa.cjs CACHE_FILE KBS_URL RESOURCE_PATH
'use strict';
const fs = require('node:fs');
const http = require('node:http');
const crypto = require('node:crypto');

const [cacheFile, kbsUrl, resourcePath] = process.argv.slice(2);
const cached = JSON.parse(fs.readFileSync(cacheFile, 'utf8'));
const key = crypto.createPrivateKey({ key: Buffer.from(cached.privateKey, 'base64'), format: 'der', type: 'pkcs8' });
const headers = { authorization: `Bearer ${cached.token}`, cookie: `kbs-session-id=${cached.cookie}` };
http.get(`${kbsUrl}/kbs/v0/resource/${resourcePath}`, { headers }, (res) => {
  const chunks = [];
  res.on('data', (c) => chunks.push(c));
  res.on('end', () => {
    const jwe = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    const h = JSON.parse(Buffer.from(jwe.protected, 'base64url').toString('utf8'));
    const z = crypto.diffieHellman({ privateKey: key, publicKey: crypto.createPublicKey({ key: h.epk, format: 'jwk' }) });
    const u32 = (n) => Buffer.from([n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]);
    const field = (b) => Buffer.concat([u32(b.length), b]);
    const kek = crypto
      .createHash('sha256')
      .update(Buffer.concat([u32(1), z, field(Buffer.from(h.alg)), field(Buffer.from(h.apu ?? '', 'base64url')), field(Buffer.from(h.apv ?? '', 'base64url')), u32(256)]))
      .digest();
    const unwrap = crypto.createDecipheriv('id-aes256-wrap', kek, Buffer.from('a6a6a6a6a6a6a6a6', 'hex'));
    const cek = Buffer.concat([unwrap.update(Buffer.from(jwe.encrypted_key, 'base64url')), unwrap.final()]);
    const gcm = crypto.createDecipheriv('aes-256-gcm', cek, Buffer.from(jwe.iv, 'base64url'));
    gcm.setAAD(Buffer.from(jwe.protected, 'ascii'));
    gcm.setAuthTag(Buffer.from(jwe.tag, 'base64url'));
    const kekOut = Buffer.concat([gcm.update(Buffer.from(jwe.ciphertext, 'base64url')), gcm.final()]);
    process.exitCode = kekOut.length === 32 ? 0 : 1;
  });
});
