package wireguard

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"strings"

	"github.com/weft-net/weft/internal/atomicfile"
	"github.com/weft-net/weft/internal/dataplane"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// LoadOrCreateKey returns the private key in path, creating the file with
// a new key when it does not exist. The file holds the key in base64 as
// `wg genkey` prints it (upstream's format, so either daemon reads the
// other's). Neither the key nor the file's content ever reaches a log or
// an error.
func LoadOrCreateKey(log *slog.Logger, path string) (dataplane.WGKey, error) {
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		return parseKeyFile(path, data)
	case !errors.Is(err, fs.ErrNotExist):
		return dataplane.WGKey{}, fmt.Errorf("wireguard key file: %w", err)
	}
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return k, fmt.Errorf("generate wireguard private key: %w", err)
	}
	if err := writeKeyFile(path, k); err != nil {
		return dataplane.WGKey{}, err
	}
	log.Info("generated a new wireguard private key", "file", path)
	return k, nil
}

func parseKeyFile(path string, data []byte) (dataplane.WGKey, error) {
	// The error from ParseKey is not wrapped: it is not ours to promise
	// that it never quotes its input.
	k, err := wgtypes.ParseKey(strings.TrimSpace(string(data)))
	if err != nil {
		return k, fmt.Errorf("wireguard key file %s: not a base64 WireGuard private key (%d bytes); fix or remove it to have a new key made",
			path, len(data))
	}
	if k == (dataplane.WGKey{}) {
		return k, fmt.Errorf("wireguard key file %s: the all-zero key is not a private key; remove it to have a new key made", path)
	}
	return k, nil
}

// writeKeyFile writes k to path atomically, readable by its owner only
// from before the first byte: a crash leaves either no key file or a
// whole one, never a truncated key that the next start would refuse.
func writeKeyFile(path string, k dataplane.WGKey) error {
	if err := atomicfile.Write(path, []byte(k.String()), 0o400); err != nil {
		return fmt.Errorf("wireguard key file: %w", err)
	}
	return nil
}
