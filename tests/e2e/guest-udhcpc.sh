#!/bin/sh
# udhcpc event script for the boot-test guest.
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
    echo "E2E-DHCP $ip"
    ;;
esac
exit 0
