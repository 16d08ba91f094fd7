/** A plain JSON object (not null, not an array): what every wire-message parser checks first. */
export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
