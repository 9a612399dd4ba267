#!/bin/sh
# Prints sshd-like log lines forever: a few attackers, one legitimate user.
# The stream of examples/live-demo.yml.
i=0
while :; do
    i=$((i + 1))
    now=$(date '+%b %e %H:%M:%S')
    case $((i % 6)) in
        0) echo "$now demo sshd[$((1000 + i))]: Accepted publickey for alice from 192.0.2.10 port $((40000 + i)) ssh2" ;;
        1|3) echo "$now demo sshd[$((1000 + i))]: Failed password for root from 203.0.113.$((i % 5 + 1)) port $((40000 + i)) ssh2" ;;
        2) echo "$now demo sshd[$((1000 + i))]: Invalid user admin from 198.51.100.$((i % 3 + 7)) port $((40000 + i))" ;;
        4) echo "$now demo sshd[$((1000 + i))]: Failed password for invalid user test from 2001:db8::$((i % 4 + 1)) port $((40000 + i)) ssh2" ;;
        5) echo "$now demo sshd[$((1000 + i))]: Failed password for root from 127.0.0.1 port $((40000 + i)) ssh2" ;;
    esac
    sleep 0.5
done
