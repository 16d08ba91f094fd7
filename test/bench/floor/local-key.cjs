// The least a local-key layer costs in Node (issue #11's reference for the per-layer figure): parse the private
// key, RSA-OAEP-unwrap the content key of the layer's JWE recipient, AES-GCM to its privopts, then AES-256-CTR and
// HMAC-SHA256 over stdin to stdout, exit. No payload, no checks: what any Node program doing this work pays.
// Usage: node local-key.cjs KEY_PEM JWE_FILE < layer > plain   (JWE_FILE: one flattened RSA-OAEP JWE, JSON)
'use strict';
const fs = require('node:fs');
const crypto = require('node:crypto');

const [keyFile, jweFile] = process.argv.slice(2);
const key = crypto.createPrivateKey(fs.readFileSync(keyFile));
const jwe = JSON.parse(fs.readFileSync(jweFile, 'utf8'));
const alg = jwe.header?.alg ?? JSON.parse(Buffer.from(jwe.protected, 'base64url').toString('utf8')).alg;
const oaepHash = alg === 'RSA-OAEP-256' ? 'sha256' : 'sha1';
const cek = crypto.privateDecrypt({ key, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash }, Buffer.from(jwe.encrypted_key, 'base64url'));
const gcm = crypto.createDecipheriv('aes-256-gcm', cek, Buffer.from(jwe.iv, 'base64url'));
gcm.setAAD(Buffer.from(jwe.protected ?? '', 'ascii'));
gcm.setAuthTag(Buffer.from(jwe.tag, 'base64url'));
const opts = JSON.parse(Buffer.concat([gcm.update(Buffer.from(jwe.ciphertext, 'base64url')), gcm.final()]).toString('utf8'));
const symKey = Buffer.from(opts.symkey, 'base64');
const decipher = crypto.createDecipheriv('aes-256-ctr', symKey, Buffer.from(opts.cipheroptions.nonce, 'base64'));
const hmac = crypto.createHmac('sha256', symKey);
const buf = Buffer.allocUnsafe(64 * 1024);
for (let n; (n = fs.readSync(0, buf, 0, buf.length, null)) > 0; ) {
  hmac.update(buf.subarray(0, n));
  fs.writeSync(1, decipher.update(buf.subarray(0, n)));
}
hmac.digest();
