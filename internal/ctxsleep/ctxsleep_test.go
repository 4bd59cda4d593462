package ctxsleep_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/ctxsleep"
)

func TestFor(t *testing.T) {
	if err := ctxsleep.For(context.Background(), time.Millisecond); err != nil {
		t.Errorf("a full wait returned %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan error, 1)
	go func() { done <- ctxsleep.For(ctx, time.Hour) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("a cancelled wait returned %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a cancelled wait did not return")
	}
}
