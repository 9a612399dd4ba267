#!/bin/sh
# Prints sshd-like log lines forever, for examples/live-demo.yml: attackers
# come in waves, so that the demo shows bans and unbans as they happen.
#
# Two lines a second. Every 40 lines (20 s) a wave starts: for 16 lines (8 s) three addresses try
# passwords, each banned at its 3rd failure, then they go quiet and their
# unban falls due 20 s after their last failure. Addresses come back in
# later waves and are banned again. A legitimate user and a local address
# (ignored by the configuration's ignorecidr) are in the log too.
i=0
while :; do
    now=$(date '+%b %e %H:%M:%S')
    wave=$((i / 40))
    pid=$((1000 + i))
    port=$((40000 + i))
    if [ $((i % 40)) -lt 16 ]; then
        case $((i % 4)) in
            0) echo "$now demo sshd[$pid]: Failed password for root from 203.0.113.$((wave % 4 + 1)) port $port ssh2" ;;
            1) echo "$now demo sshd[$pid]: Invalid user admin from 198.51.100.$((wave % 3 + 7)) port $port" ;;
            2) echo "$now demo sshd[$pid]: Failed password for invalid user test from 2001:db8::$((wave % 5 + 1)) port $port ssh2" ;;
            3) echo "$now demo sshd[$pid]: Failed password for root from 127.0.0.1 port $port ssh2" ;;
        esac
    elif [ $((i % 8)) -eq 0 ]; then
        echo "$now demo sshd[$pid]: Accepted publickey for alice from 192.0.2.10 port $port ssh2"
    fi
    i=$((i + 1))
    sleep 0.5
done
