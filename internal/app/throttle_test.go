package app

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestReadAtMostEvery: a flood of concurrent scrapes makes one read per
// interval, and every caller gets its result.
func TestReadAtMostEvery(t *testing.T) {
	var reads atomic.Int32
	read := readAtMostEvery(time.Hour, func() int32 {
		time.Sleep(10 * time.Millisecond)
		return reads.Add(1)
	})
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if v := read(); v != 1 {
				t.Errorf("read = %d, want the first read's 1", v)
			}
		}()
	}
	wg.Wait()
	if n := reads.Load(); n != 1 {
		t.Errorf("%d reads, want 1", n)
	}
	again := readAtMostEvery(time.Nanosecond, func() int32 { return reads.Add(1) })
	again()
	time.Sleep(time.Millisecond)
	if again(); reads.Load() != 3 {
		t.Errorf("after the interval: %d reads, want 3", reads.Load())
	}
}
