package conformance

import (
	"testing"
)

// Run runs the whole suite. Each subtest names the line of the contract it
// proves.
func Run(t *testing.T, mk HarnessMaker) {
	t.Run("Backend", func(t *testing.T) { testBackend(t, mk) })
	t.Run("IDs", func(t *testing.T) { testIDs(t, mk) })
	t.Run("Missing", func(t *testing.T) { testMissing(t, mk) })
	t.Run("CommitRoundTrip", func(t *testing.T) { testCommitRoundTrip(t, mk) })
	t.Run("InvisibleUntilCommit", func(t *testing.T) { testInvisibleUntilCommit(t, mk) })
	t.Run("Rollback", func(t *testing.T) { testRollback(t, mk) })
	t.Run("CommitCrash", func(t *testing.T) { testCommitCrash(t, mk) })
	t.Run("CrashMatrix", func(t *testing.T) { testCrashMatrix(t, mk) })
	t.Run("CommitAnswerLost", func(t *testing.T) { testCommitAnswerLost(t, mk) })
	t.Run("SweepRacesCommit", func(t *testing.T) { testSweepRacesCommit(t, mk) })
	t.Run("SweepKeepsCommitted", func(t *testing.T) { testSweepKeepsCommitted(t, mk) })
	t.Run("MsgIDCollision", func(t *testing.T) { testMsgIDCollision(t, mk) })
	t.Run("BlockIDs", func(t *testing.T) { testBlockIDs(t, mk) })
	t.Run("DeletePartial", func(t *testing.T) { testDeletePartial(t, mk) })
	t.Run("UpdateCAS", func(t *testing.T) { testUpdateCAS(t, mk) })
	t.Run("UpdateRace", func(t *testing.T) { testUpdateRace(t, mk) })
	t.Run("DeleteLastEnvelope", func(t *testing.T) { testDeleteLastEnvelope(t, mk) })
	t.Run("DeleteMessage", func(t *testing.T) { testDeleteMessage(t, mk) })
	t.Run("AddEnvelopeCommitted", func(t *testing.T) { testAddEnvelopeCommitted(t, mk) })
	t.Run("WalkPaging", func(t *testing.T) { testWalkPaging(t, mk) })
	t.Run("WalkCancel", func(t *testing.T) { testWalkCancel(t, mk) })
	t.Run("Checksum", func(t *testing.T) { testChecksum(t, mk) })
	t.Run("InlineContent", func(t *testing.T) { testInlineContent(t, mk) })
	t.Run("DueGroup", func(t *testing.T) { testDueGroup(t, mk) })
	t.Run("CommitSeveral", func(t *testing.T) { testCommitSeveral(t, mk) })
	t.Run("CorruptEnvelope", func(t *testing.T) { testCorruptEnvelope(t, mk) })
	t.Run("BadInput", func(t *testing.T) { testBadInput(t, mk) })
	t.Run("Closed", func(t *testing.T) { testClosed(t, mk) })
	t.Run("CancelledContext", func(t *testing.T) { testCancelledContext(t, mk) })
	t.Run("LargeMessage", func(t *testing.T) { testLargeMessage(t, mk) })
	t.Run("DeadStore", func(t *testing.T) { testDeadStore(t, mk) })
	runLeaseTests(t, mk)
}
