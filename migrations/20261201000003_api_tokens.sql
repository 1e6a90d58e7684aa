-- API tokens: only the SHA-256 digest of a token is kept. A revoked token
-- stays listed (who had access, until when); its name may be reused.
create table api_tokens (
    id uuid primary key,
    name text not null,
    role text not null check (role in ('viewer', 'operator', 'editor', 'admin')),
    token_digest bytea not null unique,
    created_at timestamptz not null default now(),
    last_used_at timestamptz,
    revoked_at timestamptz
);

create unique index api_tokens_active_name on api_tokens (name) where revoked_at is null;
