// The guest's entry point and interrupt entry stubs (assembly, assembled by the C++ compiler).
//
// _start: every vCPU arrives here in long mode with RDI = BootInfo*, RSI = vCPU index, RSP = its own
// 16-byte aligned stack, interrupts off (see guest/abi/boot_abi.hpp). It makes sure the SSE state is
// usable, resets x87 and MXCSR, and calls vmmlab_guest_main(info, index), which never returns.
//
// vmmlab_isr_stubs: 256 stubs of 16 bytes, stub N for vector N; each pushes a zero error code where the
// CPU pushes none, then the vector, and jumps to the common path, which saves the general registers and
// calls vmmlab_interrupt(frame) (guest/kernel/kernel.cpp) on a 16-byte aligned stack. The LAPIC timer
// vector, the device (MSI-X) vector and the spurious vector have their own tiny entries instead (they
// must not touch SSE state).
asm(R"(
    .pushsection .text.start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    cld
    mov %cr4, %rax
    mov %rax, %rcx
    or $0x600, %rcx               /* CR4.OSFXSR | CR4.OSXMMEXCPT: the monitor sets them, make sure */
    cmp %rax, %rcx
    je 1f
    mov %rcx, %cr4
1:  fninit
    pushq $0x1f80                 /* MXCSR reset value: all exceptions masked, round to nearest */
    ldmxcsr (%rsp)
    add $8, %rsp
    xor %ebp, %ebp
    call vmmlab_guest_main        /* RDI, RSI still hold BootInfo* and the vCPU index */
2:  cli
    hlt
    jmp 2b
    .size _start, . - _start
    .popsection

    .pushsection .text
    .balign 16
    .globl vmmlab_isr_stubs
vmmlab_isr_stubs:
    .set vector, 0
    .rept 256
    .balign 16
    .if (vector == 8) || ((vector >= 10) && (vector <= 14)) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)
    .else
    pushq $0
    .endif
    pushq $vector
    jmp vmmlab_isr_common
    .set vector, vector + 1
    .endr

vmmlab_isr_common:
    push %rax
    push %rcx
    push %rdx
    push %rbx
    push %rbp
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi
    mov %rsp, %rbx
    and $-16, %rsp
    cld
    call vmmlab_interrupt
    mov %rbx, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rbp
    pop %rbx
    pop %rdx
    pop %rcx
    pop %rax
    add $16, %rsp                 /* vector and error code */
    iretq

    .globl vmmlab_isr_timer
    .type vmmlab_isr_timer, @function
    /* An interrupt handler that counts in `counter`, sends the LAPIC an EOI and returns. Taken between
       vmmlab_safe_halt's STI and HLT (the STI shadow was not honoured, as happens under nested SVM in
       TCG), it returns past the HLT, or the CPU would halt with its wake-up already spent. */
    .macro VMMLAB_COUNTING_ISR counter
    push %rax
    lock incq \counter(%rip)
    mov vmmlab_apic_eoi(%rip), %rax
    movl $0, (%rax)
    lea vmmlab_halt_site(%rip), %rax
    cmp %rax, 8(%rsp)
    jne 1f
    lea vmmlab_halt_done(%rip), %rax
    mov %rax, 8(%rsp)
    lock incq vmmlab_halt_shadow_misses(%rip)
1:  pop %rax
    iretq
    .endm

vmmlab_isr_timer:                 /* LAPIC timer */
    VMMLAB_COUNTING_ISR vmmlab_timer_count
    .size vmmlab_isr_timer, . - vmmlab_isr_timer

    /* sti; hlt; cli with interrupts taken only while halted (the STI shadow covers the HLT). */
    .globl vmmlab_safe_halt
    .type vmmlab_safe_halt, @function
vmmlab_safe_halt:
    sti
vmmlab_halt_site:
    hlt
vmmlab_halt_done:
    cli
    ret
    .size vmmlab_safe_halt, . - vmmlab_safe_halt

    .globl vmmlab_isr_device
    .type vmmlab_isr_device, @function
vmmlab_isr_device:                /* a virtio device's MSI-X message */
    VMMLAB_COUNTING_ISR vmmlab_device_interrupts
    .size vmmlab_isr_device, . - vmmlab_isr_device

    .globl vmmlab_isr_spurious
    .type vmmlab_isr_spurious, @function
vmmlab_isr_spurious:              /* spurious LAPIC vector: no EOI */
    iretq
    .size vmmlab_isr_spurious, . - vmmlab_isr_spurious
    .popsection
)");
