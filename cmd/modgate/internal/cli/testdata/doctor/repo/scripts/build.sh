#!/bin/sh
set -e
export GOPROXY="http://127.0.0.1:7070"
go env -w GOSUMDB=off && go build ./...
