package wguser

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/device"
)

// wgLogger adapts wireguard-go's printf-style logger to slog: its verbose
// lines at debug level, its errors at error level, each under the stable
// message "wireguard-go" with the text in "detail".
//
// wireguard-go does not log keys on purpose, but some of its errors quote
// the offending UAPI line (a malformed private_key=… line, for one), so
// anything shaped like a key — 64 hex digits as UAPI writes them, or 44
// base64 characters as wg(8) does — is redacted before it is logged.
//
// Once closing is set, errors are logged at debug level: while the device
// is torn down wireguard-go reports the fallout (the MTU of a TUN that is
// already gone, say), which is expected and says nothing to an operator.
func wgLogger(log *slog.Logger, closing *atomic.Bool) *device.Logger {
	key := regexp.MustCompile(`[0-9a-fA-F]{64}|[A-Za-z0-9+/]{43}=`)
	at := func(normal slog.Level) func(string, ...any) {
		return func(format string, args ...any) {
			ctx := context.Background()
			level := normal
			if closing.Load() {
				level = slog.LevelDebug
			}
			if !log.Enabled(ctx, level) {
				return
			}
			text := key.ReplaceAllLiteralString(fmt.Sprintf(format, args...), "(key redacted)")
			log.Log(ctx, level, "wireguard-go", "detail", text)
		}
	}
	return &device.Logger{Verbosef: at(slog.LevelDebug), Errorf: at(slog.LevelError)}
}
