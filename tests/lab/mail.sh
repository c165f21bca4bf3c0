#!/bin/bash
# mail.sh GUEST_ROOT : a mail system for the lab guest, on loopback only.
# postfix (SMTP on 127.0.0.1:25, myhostname mx.corp.test) delivers corp.test mail by
# LMTP to dovecot (IMAP on 127.0.0.1:143), which keeps a mailbox per lab user.
set -euo pipefail
ROOT=$1
cat > "$ROOT/etc/postfix/main.cf" <<'CF'
compatibility_level = 3.6
myhostname = mx.corp.test
mydomain = corp.test
myorigin = corp.test
inet_interfaces = loopback-only
inet_protocols = ipv4
mydestination =
mynetworks = 127.0.0.0/8
virtual_mailbox_domains = corp.test
virtual_transport = lmtp:inet:127.0.0.1:24
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
default_transport = error:the lab delivers no mail outside corp.test
alias_maps =
alias_database =
biff = no
smtputf8_enable = no
smtpd_tls_cert_file = /etc/airut/lab-tls/server.pem
smtpd_tls_key_file = /etc/airut/lab-tls/server.key
smtpd_sasl_type = dovecot
smtpd_sasl_path = private/auth
CF
# Submission on 127.0.0.1:587: STARTTLS required, then SASL (dovecot) required.
grep -q '^127.0.0.1:587 ' "$ROOT/etc/postfix/master.cf" || cat >> "$ROOT/etc/postfix/master.cf" <<'CF'
127.0.0.1:587 inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o smtpd_recipient_restrictions=permit_sasl_authenticated,reject
CF
# Dovecot 2.4 (Debian 13) changed its configuration language; 2.3 is Debian 12's.
# The services read the same in both but for a listener's address key.
DOVECOT=$(dpkg-query --admindir="$ROOT/var/lib/dpkg" -W -f '${Version}' dovecot-core)
if dpkg --compare-versions "$DOVECOT" ge 1:2.4; then
  LISTEN=listen
  cat > "$ROOT/etc/dovecot/dovecot.conf" <<'CF'
dovecot_config_version = 2.4.0
dovecot_storage_version = 2.4.0
protocols = imap lmtp
listen = 127.0.0.1
ssl = yes
ssl_server_cert_file = /etc/airut/lab-tls/server.pem
ssl_server_key_file = /etc/airut/lab-tls/server.key
auth_allow_cleartext = yes
auth_mechanisms = plain login
mail_driver = maildir
mail_home = /var/mail/%{user | domain}/%{user | username}
mail_path = ~/
first_valid_uid = 8
passdb passwd-file {
  passwd_file_path = /etc/dovecot/lab-users
  default_password_scheme = PLAIN
}
userdb static {
  fields {
    uid = mail
    gid = mail
  }
}
CF
else
  LISTEN=address
  cat > "$ROOT/etc/dovecot/dovecot.conf" <<'CF'
protocols = imap lmtp
listen = 127.0.0.1
ssl = yes
ssl_cert = </etc/airut/lab-tls/server.pem
ssl_key = </etc/airut/lab-tls/server.key
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:/var/mail/%d/%n
first_valid_uid = 8
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u /etc/dovecot/lab-users
}
userdb {
  driver = static
  args = uid=mail gid=mail home=/var/mail/%d/%n
}
CF
fi
cat >> "$ROOT/etc/dovecot/dovecot.conf" <<CF
service imap-login {
  inet_listener imap {
    $LISTEN = 127.0.0.1
    port = 143
  }
  inet_listener imaps {
    port = 0
  }
}
service auth {
  unix_listener /var/spool/postfix/private/auth {
    mode = 0660
    user = postfix
    group = postfix
  }
}
service lmtp {
  inet_listener lmtp {
    $LISTEN = 127.0.0.1
    port = 24
  }
}
CF
cat > "$ROOT/etc/dovecot/lab-users" <<'USERS'
airut@corp.test:{PLAIN}airut-pass
alice@corp.test:{PLAIN}alice-pass
bob@corp.test:{PLAIN}bob-pass
carol@corp.test:{PLAIN}carol-pass
USERS
chmod 640 "$ROOT/etc/dovecot/lab-users"
chgrp "$(awk -F: '$1=="dovecot"{print $3}' "$ROOT/etc/group")" "$ROOT/etc/dovecot/lab-users"
# Dovecot puts postfix's SASL socket into postfix's private/ directory, which Debian
# 13's postfix makes only when it first starts (after dovecot).
install -d -m 700 -o "$(awk -F: '$1=="postfix"{print $3}' "$ROOT/etc/passwd")" \
  "$ROOT/var/spool/postfix/private"
# Every boot starts with empty mailboxes and an empty mail queue.
for q in active deferred incoming maildrop hold corrupt bounce defer flush; do
  [ -d "$ROOT/var/spool/postfix/$q" ] && find "$ROOT/var/spool/postfix/$q" -type f -delete
done
rm -rf "$ROOT/var/mail" && install -d -m 2775 -o 0 -g "$(awk -F: '$1=="mail"{print $3}' "$ROOT/etc/group")" "$ROOT/var/mail"
