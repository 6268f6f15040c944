// One interrupt line as a device sees it: the device says whether its output is asserted, the monitor
// decides how that reaches the guest (KVM_IRQ_LINE for an ISA IRQ, an irqfd, a fake in tests).
#pragma once

namespace vmmlab {

class InterruptLine {
public:
    virtual ~InterruptLine() = default;
    // Drives the line to `high` (asserted) or low. Devices call this only when the level changes, so a
    // new rising edge always follows a call with false; implementations must not call back into the device.
    virtual void set_level(bool high) = 0;
};

} // namespace vmmlab
