#!/bin/busybox sh
# /init of the boot-test guest. Writes to the serial port directly: the Kairos command line ends
# with console=tty0, so /dev/console is not the serial port.
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
# The first serial port: ttyS0 on a PC, ttyAMA0 (PL011) on an arm64 virt machine.
tty=/dev/ttyS0; [ -e /dev/ttyAMA0 ] && tty=/dev/ttyAMA0
exec >"$tty" 2>&1
echo "E2E-CMDLINE $(cat /proc/cmdline)"
for m in $(cat /lib/modules/order); do
  [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko 2>/dev/null
done
# Whether the firmware enforced Secure Boot (UEFI only): the SecureBoot variable's data byte.
if [ -d /sys/firmware/efi ]; then
  mkdir -p /sys/firmware/efi/efivars
  mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null
  # 4 bytes of attributes, then the value (efivarfs reads the variable whole).
  sb=$(od -An -t u1 /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c 2>/dev/null | awk '{print $5}')
  echo "E2E-SECUREBOOT ${sb:-unknown}"
fi
ip link set lo up
iface=""
for i in 1 2 3 4 5 6 7 8 9 10; do
  for d in /sys/class/net/*; do
    n=${d##*/}
    [ "$n" = lo ] && continue
    iface=$n
  done
  [ -n "$iface" ] && break
  sleep 1
done
echo "E2E-IFACE $iface"
ip link set "$iface" up
udhcpc -i "$iface" -s /etc/udhcpc.sh -n -q -t 20 -T 1 || echo "E2E-ERROR dhcp failed"
root=""; config=""
for w in $(cat /proc/cmdline); do
  case "$w" in
    root=live:*) root=${w#root=live:} ;;
    config_url=*) config=${w#config_url=} ;;
  esac
done
hash() { wget -q -O /tmp/f "$1" && sha256sum /tmp/f | cut -d' ' -f1; rm -f /tmp/f; }
# The cloud-config is fetched once, as Kairos does: its URL answers only this machine, a bounded
# number of times. Its first lines go to the serial port for the test to read.
chash=""
wget -q -O /tmp/c "$config" 2>/dev/null && chash=$(sha256sum /tmp/c | cut -d' ' -f1)
head -n 40 /tmp/c 2>/dev/null | while IFS= read -r line; do echo "E2E-CONFIG $line"; done
echo "E2E-RESULT rootfs=$(hash "$root") config=$chash"
# A cloud-config line "e2e-callback: URL" stands for Kairos's after-install stage: call it.
callback=$(sed -n 's/^e2e-callback: *//p' /tmp/c 2>/dev/null | head -1)
if [ -n "$callback" ]; then
  wget -q -O /dev/null "$callback" && echo "E2E-CALLBACK ok" || echo "E2E-CALLBACK failed"
fi
echo "E2E-DONE"
sync
# e2e.reboot on the command line: restart (the next boot is the test), else power off.
case " $(cat /proc/cmdline) " in
  *" e2e.reboot "*) reboot -f ;;
  *) poweroff -f ;;
esac
