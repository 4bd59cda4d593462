package cli

import (
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/daemon"
)

func TestWriteSkipped(t *testing.T) {
	var b strings.Builder
	writeSkipped(&b, &daemon.Status{
		Skipped: []daemon.SkipStatus{
			{Key: "/coreos.com/network/subnets/bogus", Reason: "bad_key"},
			{Key: "/coreos.com/network/subnets/x\n", Reason: "bad_key"},
			{Key: "/coreos.com/network/subnets/10.5.8.0-24", Reason: "decode"},
		},
		SkippedByReason: map[string]int{"bad_key": 900, "decode": 1},
	})
	want := `
SKIPPED LEASES (901)
  bad_key: 900, 2 shown
  decode: 1
  /coreos.com/network/subnets/bogus  bad_key
  "/coreos.com/network/subnets/x\n"  bad_key
  /coreos.com/network/subnets/10.5.8.0-24  decode
`
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	writeSkipped(&b, &daemon.Status{})
	if b.Len() != 0 {
		t.Errorf("nothing skipped printed %q", b.String())
	}
}
