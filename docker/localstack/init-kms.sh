#!/bin/bash
# LocalStack "ready" hook (mounted into /etc/localstack/init/ready.d/): creates the
# load-test stack's KEK, a symmetric KMS key with the alias alias/fieldcrypt, in
# the region and account the fieldcrypt containers use (AWS_DEFAULT_REGION,
# access key "test" -> account 000000000000).
#
# Idempotent: does nothing if the alias exists. LocalStack (community) keeps no
# state across container restarts, but the keyset in the fieldcrypt-keys volume
# stays wrapped by this key. So the key is recreated with the same id and the same
# key material every time: the material is generated once (32 random bytes) and
# kept in the localstack-kms volume, and LocalStack's _custom_id_ and
# _custom_key_material_ tags set them. `docker compose down -v` removes both
# volumes together. This is a local test stand-in, not key management: real
# deployments use AWS KMS, where key material never leaves the service.
set -euo pipefail

# Explicit (dummy) credentials and region: the account and region must match the
# fieldcrypt containers', and LocalStack 4 no longer sets defaults for init hooks.
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"

ALIAS="alias/fieldcrypt"
KEY_ID="6f1a2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
STATE_DIR="${FIELDCRYPT_KMS_STATE_DIR:-/var/lib/fieldcrypt-kms}"
MATERIAL_FILE="$STATE_DIR/kek-material.b64"

if awslocal kms describe-key --key-id "$ALIAS" >/dev/null 2>&1; then
  echo "init-kms: $ALIAS already exists"
  exit 0
fi

mkdir -p "$STATE_DIR"
if [[ ! -s "$MATERIAL_FILE" ]]; then
  (umask 077 && head -c 32 /dev/urandom | base64 -w0 >"$MATERIAL_FILE.tmp")
  mv "$MATERIAL_FILE.tmp" "$MATERIAL_FILE"
  echo "init-kms: generated new key material in $MATERIAL_FILE"
fi
MATERIAL="$(tr -d '\n' <"$MATERIAL_FILE")"

# The key may exist without its alias if an earlier run stopped in between.
if awslocal kms describe-key --key-id "$KEY_ID" >/dev/null 2>&1; then
  key="$KEY_ID"
else
  tags="[{\"TagKey\":\"_custom_id_\",\"TagValue\":\"$KEY_ID\"},"
  tags+="{\"TagKey\":\"_custom_key_material_\",\"TagValue\":\"$MATERIAL\"}]"
  key="$(awslocal kms create-key \
    --description "fieldcrypt load-test KEK (LocalStack)" \
    --key-usage ENCRYPT_DECRYPT --key-spec SYMMETRIC_DEFAULT \
    --tags "$tags" \
    --query KeyMetadata.KeyId --output text)"
  if [[ "$key" != "$KEY_ID" ]]; then
    echo "init-kms: warning: LocalStack ignored the _custom_id_ tag (key $key);" \
      "the keyset will not survive a LocalStack restart" >&2
  fi
fi

awslocal kms create-alias --alias-name "$ALIAS" --target-key-id "$key"
echo "init-kms: created $ALIAS -> $(awslocal kms describe-key --key-id "$ALIAS" \
  --query KeyMetadata.Arn --output text)"
