#!/bin/sh
# A stand-in for ssh that asks what a server without key login asks, then runs the real ssh
# (which logs in with the test key). Under BatchMode=yes it refuses, as a password-only server
# would. FAKE_SSH_PASSWORD is the password it accepts; FAKE_SSH_LOG records the answers.
log=${FAKE_SSH_LOG:-/dev/null}
for a in "$@"; do
    if [ "$a" = BatchMode=yes ]; then
        echo "batch" >>"$log"
        echo "root@127.0.0.1: Permission denied (publickey,password)." >&2
        exit 255
    fi
done
printf "The authenticity of host '[127.0.0.1]:2222 ([127.0.0.1]:2222)' can't be established.\n"
printf "ED25519 key fingerprint is SHA256:0N1+fAkeFingerprintForTheTestsOnly0000000000.\n"
printf "This key is not known by any other names.\n"
printf "Are you sure you want to continue connecting (yes/no/[fingerprint])? "
read -r answer
echo "hostkey:$answer" >>"$log"
if [ "$answer" != yes ]; then
    echo "Host key verification failed." >&2
    exit 255
fi
printf "Warning: Permanently added '[127.0.0.1]:2222' (ED25519) to the list of known hosts.\r\n"
tries=0
while :; do
    printf "root@127.0.0.1's password: "
    read -r pw
    tries=$((tries + 1))
    if [ "$pw" = "$FAKE_SSH_PASSWORD" ]; then
        echo "password:ok" >>"$log"
        break
    fi
    echo "password:wrong" >>"$log"
    if [ $tries -ge 3 ]; then
        echo "root@127.0.0.1: Permission denied (publickey,password)."
        exit 255
    fi
    echo "Permission denied, please try again."
done
exec "$FAKE_SSH_REAL" "$@"
