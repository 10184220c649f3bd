#!/bin/sh
# One-shot keyset set-up for the docker stack (the fieldcrypt-keys service): creates
# the keys that schemas/customer_cdc.avsc needs, wrapped by the KMS key
# alias/fieldcrypt, in the keyset file of the fieldcrypt-keys volume. The schema
# encrypts `email` deterministically in the default domain and adds an `email`
# blind index (`fieldcrypt plan` prints "keys needed: deterministic [default],
# blind-index [email]"); the other sensitive fields are randomized and use data
# keys from the KMS at run time.
#
# Idempotent: a key whose purpose and domain are already in the keyset is left
# alone (`keys create` would add a new version, i.e. rotate it).
set -eu

CONFIG="${FIELDCRYPT_CONFIG:-/etc/fieldcrypt/fieldcrypt.toml}"
SCHEMA="${FIELDCRYPT_SCHEMA:-/opt/fieldcrypt/schemas/customer_cdc.avsc}"

fieldcrypt plan --config "$CONFIG" "$SCHEMA"

# `keys list` prints one line per key: PURPOSE DOMAIN VERSION STATE ID CREATED KEK.
has_key() {
  fieldcrypt keys list --config "$CONFIG" | awk -v p="$1" -v d="$2" '
    $1 == p && $2 == d { found = 1 } END { exit !found }'
}

for spec in deterministic:default blind-index:email; do
  purpose="${spec%%:*}"
  domain="${spec#*:}"
  if has_key "$purpose" "$domain"; then
    echo "keyset already has a $purpose key for domain $domain"
  else
    fieldcrypt keys create --config "$CONFIG" --purpose "$purpose" --domain "$domain"
  fi
done

fieldcrypt keys list --config "$CONFIG"
