"""What the tests and the benchmark share to drive the real servers: start them on loopback
ports (`servers`), closed-loop load (`recorder`), V1 bodies (`v1`), image sets from real photos
(`drift_images`) and the rule for missing real parts (`needs`). Not part of the installed
package; nothing in the servers imports it."""
