/*
 * The machine's achievable decode limit for the layer cipher, as a reference for `npm run bench`: one thread, the
 * same work as a stream processor (HMAC-SHA256 over the ciphertext, AES-256-CTR decryption into a reused buffer)
 * through the same pipes (stdin from cat, stdout to /dev/null), OpenSSL's EVP API directly, no language runtime.
 * The key is random: the output is not checked, the cost is the same. Built by test/bench/c-reference.ts.
 */
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define CHUNK (64 * 1024)

static int write_all(const unsigned char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(1, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

int main(void) {
  unsigned char key[32], iv[16], in[CHUNK], out[CHUNK], mac[EVP_MAX_MD_SIZE];
  if (RAND_bytes(key, sizeof key) != 1 || RAND_bytes(iv, sizeof iv) != 1) return 2;
  EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
  EVP_MAC *hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
  EVP_MAC_CTX *m = hmac ? EVP_MAC_CTX_new(hmac) : NULL;
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", "SHA256", 0), OSSL_PARAM_construct_end()};
  if (!c || !m || EVP_DecryptInit_ex(c, EVP_aes_256_ctr(), NULL, key, iv) != 1 || EVP_MAC_init(m, key, sizeof key, params) != 1) return 3;
  for (;;) {
    ssize_t n = read(0, in, sizeof in);
    if (n < 0) {
      if (errno == EINTR) continue;
      return 4;
    }
    if (n == 0) break;
    int outl = 0;
    if (EVP_MAC_update(m, in, (size_t)n) != 1 || EVP_DecryptUpdate(c, out, &outl, in, (int)n) != 1) return 5;
    if (write_all(out, (size_t)outl) != 0) return 6;
  }
  size_t macl = 0;
  if (EVP_MAC_final(m, mac, &macl, sizeof mac) != 1) return 7;
  EVP_MAC_CTX_free(m);
  EVP_MAC_free(hmac);
  EVP_CIPHER_CTX_free(c);
  return 0;
}
