/**
 * RCAR sessions (trustee kbs/src/attestation/session.rs): id = UUIDv4 "simple" form
 * (32 lowercase hex), fixed expiry set at `/auth` and never extended, `Authed` → `Attested{token}`; expired
 * sessions are dropped when looked up.
 */
import { randomUUID } from 'node:crypto';

export const KBS_SESSION_ID = 'kbs-session-id';

export type Session =
  | { state: 'authed'; id: string; expiresAt: number; tee: string; nonce: string }
  | { state: 'attested'; id: string; expiresAt: number; token: string };

export class SessionMap {
  private readonly sessions = new Map<string, Session>();

  create(tee: string, nonce: string, ttlSeconds: number): Session {
    this.sweep();
    const session: Session = {
      state: 'authed',
      id: randomUUID().replaceAll('-', ''),
      expiresAt: Date.now() + ttlSeconds * 1000,
      tee,
      nonce,
    };
    this.sessions.set(session.id, session);
    return session;
  }

  /** The live session, or undefined if unknown or expired (an expired one is deleted, as trustee does). */
  get(id: string): Session | undefined {
    const session = this.sessions.get(id);
    if (session && session.expiresAt < Date.now()) {
      this.sessions.delete(id);
      return undefined;
    }
    return session;
  }

  attest(id: string, token: string): Session | undefined {
    const session = this.get(id);
    if (!session || session.state !== 'authed') return session;
    const attested: Session = { state: 'attested', id, expiresAt: session.expiresAt, token };
    this.sessions.set(id, attested);
    return attested;
  }

  private sweep(): void {
    const now = Date.now();
    for (const [id, s] of this.sessions) if (s.expiresAt < now) this.sessions.delete(id);
  }
}

/** actix `Cookie::build(name, id).expires(t).finish()`: only `Expires`, no Path/Domain/Secure/HttpOnly/SameSite. */
export function sessionCookie(session: Session): string {
  return `${KBS_SESSION_ID}=${session.id}; Expires=${new Date(session.expiresAt).toUTCString()}`;
}

/** The first `kbs-session-id` value from the Cookie header(s), as actix's `request.cookie(name)` finds it. */
export function sessionIdFromCookieHeader(header: string | string[] | undefined): string | undefined {
  const headers = header === undefined ? [] : Array.isArray(header) ? header : [header];
  for (const h of headers) {
    for (const part of h.split(';')) {
      const eq = part.indexOf('=');
      if (eq < 0) continue;
      if (part.slice(0, eq).trim() === KBS_SESSION_ID) return part.slice(eq + 1).trim();
    }
  }
  return undefined;
}
