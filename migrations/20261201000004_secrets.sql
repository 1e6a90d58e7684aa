-- Named secrets (SPEC 7): values sealed with XChaCha20-Poly1305 under the
-- deployment's secrets key (the name is the associated data), never stored
-- in clear. `digest` is the keyed HMAC-SHA256 of the value that cache keys
-- hold, so planning can predict a hit without decrypting.
create table secrets (
    name text primary key,
    nonce bytea not null,
    ciphertext bytea not null,
    digest text not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
